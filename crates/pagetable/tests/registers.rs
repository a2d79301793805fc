//! System register values, checked against values worked out by hand.

use bulkhead_pagetable::{pa_bits, tcr_el2, vtcr_el2, vttbr, MAIR_EL2, VTCR_EL2_VS_16BIT_VMID};

#[test]
fn vtcr_el2_for_39_bit_ipa_and_parange_5() {
    // T0SZ  = 64 - 39 = 25        -> 0x19        [5:0]
    // SL0   = 0b01 (level 1)      -> 0x40        [7:6]
    // IRGN0 = 0b01 WBWA           -> 0x100       [9:8]
    // ORGN0 = 0b01 WBWA           -> 0x400       [11:10]
    // SH0   = 0b11 inner          -> 0x3000      [13:12]
    // TG0   = 0b00 4 KiB          -> 0           [15:14]
    // PS    = 0b101 (48 bits)     -> 0x5_0000    [18:16]
    // RES1  bit 31                -> 0x8000_0000
    // Sum: 0x8000_0000 + 0x5_0000 + 0x3000 + 0x400 + 0x100 + 0x40 + 0x19
    assert_eq!(vtcr_el2(39, 1, 5), 0x8005_3559);
}

#[test]
fn vtcr_el2_sl0_encodes_level_0_and_level_2_starts() {
    // 48-bit IPA: T0SZ 16 (0x10), SL0 0b10 (0x80).
    assert_eq!(vtcr_el2(48, 0, 5), 0x8005_3590);
    // 30-bit IPA: T0SZ 34 (0x22), SL0 0b00, PS 0b010 (40 bits, 0x2_0000).
    assert_eq!(vtcr_el2(30, 2, 2), 0x8002_3522);
}

#[test]
fn vtcr_el2_leaves_16_bit_vmids_off() {
    assert_eq!(vtcr_el2(39, 1, 5) & VTCR_EL2_VS_16BIT_VMID, 0);
    assert_eq!(VTCR_EL2_VS_16BIT_VMID, 1 << 19);
}

#[test]
fn tcr_el2_for_39_bit_va_and_parange_5() {
    // T0SZ 25 (0x19) | IRGN0 WBWA (0x100) | ORGN0 WBWA (0x400)
    // | SH0 inner (0x3000) | TG0 4 KiB (0) | PS 0b101 (0x5_0000)
    // | RES1 bit 23 (0x80_0000) | RES1 bit 31 (0x8000_0000)
    assert_eq!(tcr_el2(39, 5), 0x8085_3519);
    // T0SZ 16 (0x10), PS 0b010 (0x2_0000).
    assert_eq!(tcr_el2(48, 2), 0x8082_3510);
}

#[test]
fn mair_el2_has_device_at_0_and_normal_wb_at_1() {
    assert_eq!(MAIR_EL2, 0xff00);
}

#[test]
fn pa_bits_decodes_every_parange_value() {
    let expected = [32, 36, 40, 42, 44, 48, 52];
    for (range, bits) in expected.iter().enumerate() {
        assert_eq!(pa_bits(range as u8), Some(*bits));
    }
    assert_eq!(pa_bits(7), None);
    assert_eq!(pa_bits(0xff), None);
}

#[test]
fn vttbr_puts_vmid_in_the_top_16_bits() {
    assert_eq!(vttbr(5, 0x4008_0000), 0x0005_0000_4008_0000);
    assert_eq!(vttbr(0xabcd, 0x7_0000_1000), 0xabcd_0007_0000_1000);
    assert_eq!(vttbr(0, 0x1000), 0x1000);
    // A root address above 48 bits cannot leak into the VMID field.
    assert_eq!(vttbr(1, 0xffff_0000_0000_1000), 0x0001_0000_0000_1000);
}
