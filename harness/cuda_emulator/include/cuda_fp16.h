// __half for the emulator: IEEE binary16 bits, converted in software so that any C++17 compiler will do.
#pragma once
#include "../emulator.h"

struct __half
{
    uint16_t bits;
};

inline float __half2float(__half h)
{
    const uint32_t sign = (h.bits & 0x8000u) << 16, exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
    if (exponent == 0)
    {  // zero or subnormal: mantissa * 2^-24, exact in float
        const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    const uint32_t bits = sign
        | (exponent == 0x1f ? 0x7f800000u | mantissa << 13  // Inf, NaN
                            : (exponent + 112) << 23 | mantissa << 13);
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest, ties to even (what __float2half_rn and __float2half do).
inline __half __float2half_rn(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u | (x >> 13 & 0x3ffu))};  // NaN stays NaN
    if (x >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520 (or Inf) rounds to Inf
    uint32_t h, rest, half;  // h: the truncated result; rest: the bits cut off, compared with half a unit
    if (x >= 0x38800000u)
    {  // >= 2^-14: a normal half; re-bias the exponent from 127 to 15
        h = (x >> 13) - (112u << 10);
        rest = x & 0x1fffu;
        half = 0x1000u;
    }
    else
    {  // a subnormal half (or zero): units of 2^-24
        const uint32_t shift = 126 - (x >> 23), mantissa = (x & 0x7fffffu) | 0x800000u;
        if (shift > 24) return {sign};  // below 2^-25: rounds to zero
        h = mantissa >> shift;
        rest = mantissa & ((1u << shift) - 1);
        half = 1u << (shift - 1);
    }
    if (rest > half || (rest == half && (h & 1))) ++h;  // a carry may run into the exponent: still right
    return {static_cast<uint16_t>(sign | h)};
}
inline __half __float2half(float f)
{
    return __float2half_rn(f);
}
