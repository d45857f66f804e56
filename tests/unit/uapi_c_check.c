// SPDX-License-Identifier: MIT
/*
 * The UAPI header must compile as strict C as well as C++ (the build fails
 * otherwise).
 */
#include <linux/llmos.h>

_Static_assert(sizeof(struct llmos_version) == 24, "llmos_version layout");

int llmos_uapi_c_check(void)
{
	return LLMOS_IOC_VERSION != 0;
}
