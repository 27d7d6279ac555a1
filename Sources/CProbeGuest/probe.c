#include "CProbeGuest.h"
extern const unsigned char vireo_probe_code_start[];
extern const unsigned char vireo_probe_code_end[];
const unsigned char *vireo_probe_code(size_t *length) {
    *length = (size_t)(vireo_probe_code_end - vireo_probe_code_start);
    return vireo_probe_code_start;
}
