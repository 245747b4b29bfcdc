//! The boot GDT shared by all boot modes, and the segment registers each mode starts with.

use kvm_bindings::kvm_segment;

/// Selectors into the boot GDT. Linux's boot protocol fixes 0x10 (code) and 0x18 (data).
pub const CODE32: u16 = 0x08;
pub const CODE64: u16 = 0x10;
pub const DATA: u16 = 0x18;
pub const USER_DATA: u16 = 0x20 | 3;
pub const USER_CODE64: u16 = 0x28 | 3;
pub const TSS: u16 = 0x30;

/// The TSS: 0x68 bytes, then an I/O permission bitmap of all zeroes (every port allowed, so
/// ring-3 port I/O works even where the emulator checks the bitmap), then the 0xff end byte.
pub const TSS_IOMAP_BASE: u16 = 0x68;
/// The TSS limit covers the bitmap (65536 ports) and its end byte.
pub const TSS_LIMIT: u32 = TSS_IOMAP_BASE as u32 + 8192;

/// A flat segment descriptor from flags (access byte and granularity nibble) and base/limit.
const fn desc(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The GDT's 8-byte words (the TSS descriptor takes two) for a TSS at `tss_base`.
pub fn table(tss_base: u64) -> [u64; 8] {
    [
        0,
        desc(0xc09b, 0, 0xfffff),                 // 32-bit code, ring 0
        desc(0xa09b, 0, 0xfffff),                 // 64-bit code, ring 0
        desc(0xc093, 0, 0xfffff),                 // data, ring 0
        desc(0xc0f3, 0, 0xfffff),                 // data, ring 3
        desc(0xa0fb, 0, 0xfffff),                 // 64-bit code, ring 3
        desc(0x008b, tss_base as u32, TSS_LIMIT), // busy 64-bit TSS
        tss_base >> 32,
    ]
}

/// The KVM segment register matching GDT entry `selector`.
pub fn segment(gdt: &[u64; 8], selector: u16) -> kvm_segment {
    let d = gdt[usize::from(selector >> 3)];
    let g = ((d >> 55) & 1) as u8;
    let raw_limit = (((d >> 32) & 0xf_0000) | (d & 0xffff)) as u32;
    let mut base = ((d >> 16) & 0xff_ffff) | ((d >> 32) & 0xff00_0000);
    if selector & !7 == TSS {
        base |= gdt[usize::from(selector >> 3) + 1] << 32;
    }
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((d >> 40) & 0xf) as u8,
        present: ((d >> 47) & 1) as u8,
        dpl: ((d >> 45) & 3) as u8,
        db: ((d >> 54) & 1) as u8,
        s: ((d >> 44) & 1) as u8,
        l: ((d >> 53) & 1) as u8,
        g,
        avl: ((d >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_from_the_table() {
        let gdt = table(0x1_2345_6000);
        let cs = segment(&gdt, USER_CODE64);
        assert_eq!(
            (cs.dpl, cs.l, cs.s, cs.type_, cs.present),
            (3, 1, 1, 0xb, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(&gdt, DATA);
        assert_eq!((ds.dpl, ds.db, ds.type_), (0, 1, 3));
        let tr = segment(&gdt, TSS);
        assert_eq!(
            (tr.base, tr.limit, tr.s, tr.type_),
            (0x1_2345_6000, TSS_LIMIT, 0, 0xb)
        );
        let c32 = segment(&gdt, CODE32);
        assert_eq!((c32.db, c32.l), (1, 0));
    }
}
