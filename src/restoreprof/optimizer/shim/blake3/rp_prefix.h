/* Vendored BLAKE3 (upstream BLAKE3-team/BLAKE3 c/, version 1.8.6, CC0-1.0 OR Apache-2.0).
 * Debian 12 has no libblake3-dev. This header, forced into every BLAKE3 file by build.py,
 * renames the assembly entry points (which are global symbols) so that they cannot clash
 * with another BLAKE3 that the application loads; the C API is hidden (BLAKE3_API). */
#ifndef RP_BLAKE3_PREFIX_H
#define RP_BLAKE3_PREFIX_H
#define blake3_compress_in_place_avx512 rp_blake3_compress_in_place_avx512
#define _blake3_compress_in_place_avx512 _rp_blake3_compress_in_place_avx512
#define blake3_compress_in_place_sse2 rp_blake3_compress_in_place_sse2
#define _blake3_compress_in_place_sse2 _rp_blake3_compress_in_place_sse2
#define blake3_compress_in_place_sse41 rp_blake3_compress_in_place_sse41
#define _blake3_compress_in_place_sse41 _rp_blake3_compress_in_place_sse41
#define blake3_compress_xof_avx512 rp_blake3_compress_xof_avx512
#define _blake3_compress_xof_avx512 _rp_blake3_compress_xof_avx512
#define blake3_compress_xof_sse2 rp_blake3_compress_xof_sse2
#define _blake3_compress_xof_sse2 _rp_blake3_compress_xof_sse2
#define blake3_compress_xof_sse41 rp_blake3_compress_xof_sse41
#define _blake3_compress_xof_sse41 _rp_blake3_compress_xof_sse41
#define blake3_hash_many_avx2 rp_blake3_hash_many_avx2
#define _blake3_hash_many_avx2 _rp_blake3_hash_many_avx2
#define blake3_hash_many_avx512 rp_blake3_hash_many_avx512
#define _blake3_hash_many_avx512 _rp_blake3_hash_many_avx512
#define blake3_hash_many_sse2 rp_blake3_hash_many_sse2
#define _blake3_hash_many_sse2 _rp_blake3_hash_many_sse2
#define blake3_hash_many_sse41 rp_blake3_hash_many_sse41
#define _blake3_hash_many_sse41 _rp_blake3_hash_many_sse41
#define blake3_xof_many_avx512 rp_blake3_xof_many_avx512
#define _blake3_xof_many_avx512 _rp_blake3_xof_many_avx512
#endif
