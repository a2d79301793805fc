//! Per-pCPU state, reached through TPIDR_EL2. Each field is written by its
//! own CPU (or before that CPU starts) and read by others only through
//! atomics, so there is no `static mut` and no lock on the trap path.

use crate::arch::{self, MAX_CPUS};
use bulkhead_types::PcpuId;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// `repr(C)`: entry.S reads `emergency_stack` at offset 0.
#[repr(C)]
pub struct PerCpu {
    pub emergency_stack: AtomicU64,
    pub index: AtomicUsize,
    pub mpidr: AtomicU64,
    pub gicr: AtomicUsize,
    /// The VM this pCPU hosts (its index + 1; 0 for none) and the vCPU,
    /// cached here from the system's assignment so the trap path needs no
    /// table lookup.
    pub vm_plus_one: AtomicUsize,
    pub vcpu: AtomicUsize,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            emergency_stack: AtomicU64::new(0),
            index: AtomicUsize::new(0),
            mpidr: AtomicU64::new(0),
            gicr: AtomicUsize::new(0),
            vm_plus_one: AtomicUsize::new(0),
            vcpu: AtomicUsize::new(0),
        }
    }

    pub fn id(&self) -> PcpuId {
        PcpuId(self.index.load(Ordering::Relaxed) as u16)
    }
}

static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Sets up CPU `index`'s record and points TPIDR_EL2 at it. Called first
/// thing on each CPU.
pub fn init(index: usize, mpidr: u64) {
    let Some(p) = PERCPU.get(index) else {
        arch::halt()
    };
    p.emergency_stack
        .store(arch::emergency_stack_top(index) as u64, Ordering::Relaxed);
    p.index.store(index, Ordering::Relaxed);
    p.mpidr.store(mpidr, Ordering::Relaxed);
    // SAFETY: `p` is a static that lives forever; TPIDR_EL2 is only read by
    // `this()` and the vectors.
    unsafe { arch::regs::set_tpidr_el2(p as *const PerCpu as u64) };
}

/// This CPU's record.
pub fn this() -> &'static PerCpu {
    let p = arch::regs::tpidr_el2() as *const PerCpu;
    if p.is_null() {
        return &PERCPU[0];
    }
    // SAFETY: TPIDR_EL2 is only ever set by `init` to an element of PERCPU.
    unsafe { &*p }
}

/// This CPU's id for log lines, also before `init` ran.
pub fn this_index_or_boot() -> PcpuId {
    this().id()
}

pub fn get(index: usize) -> Option<&'static PerCpu> {
    PERCPU.get(index)
}
