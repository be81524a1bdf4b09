// SPDX-License-Identifier: GPL-2.0
/*
 * fscrypt_v2_setup: adds a random v2 master key to a filesystem and sets
 * a v2 AES-256-XTS/AES-256-CTS policy on an empty directory of it.
 *
 *   fscrypt_v2_setup DIR [iv_ino_lblk_64|iv_ino_lblk_32]
 *
 * A test helper for the guest driver's smoke test (boot-smoke.sh), built
 * statically so that a busybox initramfs can run it.  Prints the key
 * identifier.  The key stays in the filesystem's keyring until unmount.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fscrypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <unistd.h>

#define KEY_SIZE 64

int main(int argc, char **argv)
{
	struct {
		struct fscrypt_add_key_arg arg;
		unsigned char raw[KEY_SIZE];
	} add = { 0 };
	struct fscrypt_policy_v2 policy = { 0 };
	int fd, i;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s DIR [iv_ino_lblk_64|iv_ino_lblk_32]\n",
			argv[0]);
		return 2;
	}
	fd = open(argv[1], O_RDONLY | O_DIRECTORY);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	if (getrandom(add.raw, KEY_SIZE, 0) != KEY_SIZE) {
		perror("getrandom");
		return 1;
	}

	add.arg.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
	add.arg.raw_size = KEY_SIZE;
	if (ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, &add.arg) != 0) {
		perror("FS_IOC_ADD_ENCRYPTION_KEY");
		return 1;
	}
	memset(add.raw, 0, KEY_SIZE);

	policy.version = FSCRYPT_POLICY_V2;
	policy.contents_encryption_mode = FSCRYPT_MODE_AES_256_XTS;
	policy.filenames_encryption_mode = FSCRYPT_MODE_AES_256_CTS;
	policy.flags = FSCRYPT_POLICY_FLAGS_PAD_32;
	if (argc == 3 && !strcmp(argv[2], "iv_ino_lblk_64")) {
		policy.flags |= FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64;
	} else if (argc == 3 && !strcmp(argv[2], "iv_ino_lblk_32")) {
		policy.flags |= FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32;
	} else if (argc == 3) {
		fprintf(stderr, "unknown flag %s\n", argv[2]);
		return 2;
	}
	memcpy(policy.master_key_identifier,
	       add.arg.key_spec.u.identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
	if (ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, &policy) != 0) {
		perror("FS_IOC_SET_ENCRYPTION_POLICY");
		return 1;
	}

	for (i = 0; i < FSCRYPT_KEY_IDENTIFIER_SIZE; i++)
		printf("%02x", policy.master_key_identifier[i]);
	printf("\n");
	close(fd);
	return 0;
}
