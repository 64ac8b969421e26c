/*
 * crc32c (Castagnoli), the per-chunk checksum of snapshots: the CPU's crc32c instruction where
 * it has one (SSE4.2 on x86-64, the CRC extension on aarch64), a portable table otherwise. Each
 * fast path is compiled only for its architecture and chosen at run time; RP_CRC32C_PORTABLE
 * builds the table alone (tests check it against the definition on any machine).
 */
#define _GNU_SOURCE
#include "shim.h"

#include <pthread.h>
#include <string.h>

#if !defined(RP_CRC32C_PORTABLE) && (defined(__x86_64__) || defined(__i386__))
#define RP_CRC32C_X86 1
#elif !defined(RP_CRC32C_PORTABLE) && defined(__aarch64__)
#define RP_CRC32C_ARM 1
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

/* ---- the portable table ---- */

static uint32_t crc_table[256];

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

#ifdef RP_CRC32C_X86
/* ---- x86-64: SSE4.2 ---- */

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw_serial(uint32_t crc, const uint8_t *p,
                                                                    size_t n)
{
    uint64_t c = crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; n--, p++)
        c32 = __builtin_ia32_crc32qi(c32, *p);
    return c32;
}

/*
 * One crc32 instruction has a latency of 3 cycles but issues every cycle, so three independent
 * streams run about three times as fast as one. The register update is linear over GF(2), so
 * crc(s, A || B) = shift(crc(s, A), |B|) ^ crc(0, B), where shift(x, L) is the state reached by
 * feeding L zero bytes from state x. For the fixed block length used here, shift is tabulated
 * per byte of x once.
 */
#define CRC_BLOCK 8192
static uint32_t crc_shift_table[4][256];

__attribute__((target("sse4.2"))) static void crc_shift_init(void)
{
    static const uint8_t zeros[CRC_BLOCK];
    for (int k = 0; k < 4; k++)
        for (uint32_t v = 0; v < 256; v++)
            crc_shift_table[k][v] = crc32c_hw_serial(v << (8 * k), zeros, CRC_BLOCK);
}

static uint32_t crc_shift(uint32_t x)
{
    return crc_shift_table[0][x & 0xff] ^ crc_shift_table[1][(x >> 8) & 0xff] ^
           crc_shift_table[2][(x >> 16) & 0xff] ^ crc_shift_table[3][x >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_shift_init);
    for (; n >= 3 * CRC_BLOCK; n -= 3 * CRC_BLOCK, p += 3 * CRC_BLOCK) {
        uint64_t c0 = crc, c1 = 0, c2 = 0;
        for (size_t i = 0; i < CRC_BLOCK; i += 8) {
            uint64_t w0, w1, w2;
            memcpy(&w0, p + i, 8);
            memcpy(&w1, p + CRC_BLOCK + i, 8);
            memcpy(&w2, p + 2 * CRC_BLOCK + i, 8);
            c0 = __builtin_ia32_crc32di(c0, w0);
            c1 = __builtin_ia32_crc32di(c1, w1);
            c2 = __builtin_ia32_crc32di(c2, w2);
        }
        crc = crc_shift(crc_shift((uint32_t)c0) ^ (uint32_t)c1) ^ (uint32_t)c2;
    }
    return crc32c_hw_serial(crc, p, n);
}
#endif /* RP_CRC32C_X86 */

#ifdef RP_CRC32C_ARM
/* ---- aarch64: the ARMv8 CRC extension (every server core in use: Neoverse, Grace) ---- */

__attribute__((target("+crc"))) static uint32_t crc32c_arm(uint32_t crc, const uint8_t *p,
                                                           size_t n)
{
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = __crc32cd(crc, word);
    }
    for (; n; n--, p++)
        crc = __crc32cb(crc, *p);
    return crc;
}
#endif /* RP_CRC32C_ARM */

static uint32_t crc32c_table(uint32_t crc, const uint8_t *p, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_table_init);
    for (; n; n--, p++)
        crc = crc_table[(crc ^ *p) & 0xff] ^ (crc >> 8);
    return crc;
}

RP_EXPORT uint32_t rp_crc32c(uint32_t crc, const void *data, size_t n)
{
    const uint8_t *p = data;
    crc = ~crc;
#if defined(RP_CRC32C_X86)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc32c_hw(crc, p, n);
#elif defined(RP_CRC32C_ARM)
    if (getauxval(AT_HWCAP) & HWCAP_CRC32)
        return ~crc32c_arm(crc, p, n);
#endif
    return ~crc32c_table(crc, p, n);
}
