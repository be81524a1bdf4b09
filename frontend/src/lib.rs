//! Native vhost-user frontend (in progress).
