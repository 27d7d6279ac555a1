#ifndef VIREO_CPROBEGUEST_H
#define VIREO_CPROBEGUEST_H
#include <stddef.h>
/// The probe guest's machine code (see probe.S) and its length in bytes.
const unsigned char *vireo_probe_code(size_t *length);
#endif
