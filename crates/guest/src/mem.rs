//! Reading guest-physical memory through the VMM's identity map.

/// Start of the 32-bit MMIO hole: no RAM from here to 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Whether `[addr, addr + len)` is non-null memory below the MMIO hole, i.e.
/// identity-mapped and not device memory, so that reading it is harmless.
pub fn readable(addr: u64, len: u64) -> bool {
    addr != 0
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= MMIO_HOLE_START)
}

/// Integers: every bit pattern is a valid value.
pub trait Plain: Copy {}
impl Plain for u8 {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for u64 {}

/// Reads a `T` at guest-physical `addr` (alignment not required).
///
/// Panics if the bytes are not [`readable`]: callers check ranges first and
/// report bad ones, so a panic here is a bug in the guest.
pub fn read<T: Plain>(addr: u64) -> T {
    assert!(
        readable(addr, size_of::<T>() as u64),
        "read of {addr:#x} outside low memory"
    );
    // SAFETY: the bytes are non-null, identity-mapped memory below the MMIO
    // hole (checked above), reading them has no side effect, and any bit
    // pattern is a valid `T: Plain`. Other CPUs never write what we read here.
    unsafe { core::ptr::read_unaligned(core::ptr::with_exposed_provenance::<T>(addr as usize)) }
}

/// The `len` bytes at `addr`, which must be [`readable`] (panics otherwise).
pub fn bytes(addr: u64, len: u64) -> &'static [u8] {
    assert!(
        readable(addr, len),
        "{len} bytes at {addr:#x} are outside low memory"
    );
    // SAFETY: as in `read`; nothing writes these bytes while the guest runs
    // (they are the VMM's boot structures), so a `'static` borrow is sound.
    unsafe {
        core::slice::from_raw_parts(
            core::ptr::with_exposed_provenance(addr as usize),
            len as usize,
        )
    }
}

// The C memory functions LLVM emits calls to. `core` does not provide them on
// this (hosted) target, and there is no libc. String instructions keep LLVM
// from recognising a loop and calling the function from itself.

/// `memcpy`.
///
/// # Safety
///
/// The C contract: `n` bytes readable at `src`, writable at `dst`, no overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memcpy's contract; DF is clear (ABI).
    unsafe {
        core::arch::asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _,
            inout("rcx") n => _, options(nostack, preserves_flags));
    }
    dst
}

/// `memmove`.
///
/// # Safety
///
/// The C contract: `n` bytes readable at `src` and writable at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: copy forwards.
        // SAFETY: as in `memcpy`; a forward copy is correct when `dst` does
        // not start inside `[src, src + n)`.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: the caller upholds memmove's contract; copy backwards from the
    // last byte with DF set, and clear DF again as the ABI requires.
    unsafe {
        core::arch::asm!("std", "rep movsb", "cld",
            inout("rdi") dst.wrapping_add(n).wrapping_sub(1) => _,
            inout("rsi") src.wrapping_add(n).wrapping_sub(1) => _,
            inout("rcx") n => _, options(nostack));
    }
    dst
}

/// `memset`.
///
/// # Safety
///
/// The C contract: `n` bytes writable at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memset's contract; DF is clear (ABI).
    unsafe {
        core::arch::asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _,
            in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp`.
///
/// # Safety
///
/// The C contract: `n` bytes readable at `a` and at `b`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n`, and the caller guarantees `n` readable bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp`: like `memcmp`, but only zero versus non-zero matters.
///
/// # Safety
///
/// As for [`memcmp`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
