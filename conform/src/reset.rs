//! A device reset empties every keyslot (docs/PROTOCOL.md, "Device
//! rules", **Keys**): a new vhost-user connection, or SET_FEATURES (which
//! begins every start of the device by a driver).

use icelab_protocol::VHOST_USER_F_PROTOCOL_FEATURES;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;

use crate::check::{Check, CheckResult, Failure, Param, Requirement, section};
use crate::crypto::{Write, key_in_slot0, setup, some_dun};
use crate::keyslots::assert_slot_refused;
use crate::session::{AREA_SECTOR, Ctx, Session};

pub(crate) const CHECKS: &[Check] = &[
    Check {
        id: "reset/new-connection-evicts-keys",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "a key programmed on one connection is gone on the next",
        param: Param::Once,
        run: new_connection_evicts_keys,
    },
    Check {
        id: "reset/set-features-evicts-keys",
        section: section::RULES,
        requirement: Requirement::Must,
        summary: "SET_FEATURES again on the same connection empties every keyslot",
        param: Param::Once,
        run: set_features_evicts_keys,
    },
];

fn new_connection_evicts_keys(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let key = ctx.new_key();
    {
        let mut first = ctx.connect()?;
        first.program(&key, 0, setup.data_unit_size, setup.dun_bytes)?;
        Write {
            key: &key,
            slot: 0,
            data_unit_size: setup.data_unit_size,
            dun: some_dun(setup.dun_bytes, setup.units),
            units: setup.units,
            sector: AREA_SECTOR,
            segment: None,
        }
        .write_ok(&mut first)?;
        // Dropping the session closes the connection.
    }
    let mut second = ctx.connect()?;
    // Deliberately no evict first: the slot must already be empty.
    assert_slot_refused(
        &mut second,
        0,
        &setup,
        "on a new connection, after the previous one programmed it",
    )?;
    Ok(())
}

fn set_features_evicts_keys(ctx: &mut Ctx<'_>) -> CheckResult {
    let setup = setup(ctx)?;
    let (key, mut session) = key_in_slot0(ctx, &setup)?;
    Write::in_area(&key, &setup).write_ok(&mut session)?;
    set_features_again(&mut session)?;
    assert_slot_refused(
        &mut session,
        0,
        &setup,
        "after a second SET_FEATURES (a device reset)",
    )?;
    Ok(())
}

/// A device reset as QEMU starts the device again: SET_FEATURES with the
/// acked features on the same connection, then (with protocol features)
/// every ring in use enabled again.
pub(crate) fn set_features_again(session: &mut Session) -> Result<(), Failure> {
    let frontend = session.frontend();
    let acked = frontend.acked_features();
    frontend
        .vhost_request("SET_FEATURES", |vhost| vhost.set_features(acked))
        .map_err(|error| {
            Failure::new(format!(
                "vhost-user SET_FEATURES {acked:#x} a second time failed: {error}"
            ))
        })?;
    // With protocol features, SET_FEATURES leaves the rings disabled
    // (vhost-user: "Ring states"); enable those in use again.
    if acked & icelab_protocol::feature(VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
        let queues = usize::from(frontend.num_queues())
            + usize::from(frontend.control_queue_index().is_some());
        for index in 0..queues {
            frontend
                .vhost_request("SET_VRING_ENABLE", |vhost| {
                    vhost.set_vring_enable(index, true)
                })
                .map_err(|error| {
                    Failure::new(format!(
                        "vhost-user SET_VRING_ENABLE {index} after SET_FEATURES failed: {error}"
                    ))
                })?;
        }
    }
    Ok(())
}
