//! A recording vCPU for this crate's unit tests.

use std::sync::{Mutex, MutexGuard};

use vmkit_hypervisor::{
    CpuIdEntry, Error, FpuState, LapicState, MsrEntry, Regs, Result, SpecialRegs, Vcpu, VcpuExit,
};

#[derive(Default)]
pub struct State {
    pub regs: Regs,
    pub sregs: SpecialRegs,
    pub fpu: FpuState,
    pub msrs: Vec<MsrEntry>,
    pub cpuid: Option<Vec<CpuIdEntry>>,
    pub lapic: LapicState,
    /// MSR indices `set_msrs` refuses.
    pub refused_msrs: Vec<u32>,
    /// Which setters were called, in order.
    pub calls: Vec<&'static str>,
    /// Make every call fail.
    pub fail: bool,
}

#[derive(Default)]
pub struct TestVcpu(Mutex<State>);

impl TestVcpu {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
    pub fn state_mut(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
    fn call(&self, name: &'static str) -> Result<MutexGuard<'_, State>> {
        let mut s = self.state();
        if s.fail {
            return Err(Error::InvalidArgument("test failure".into()));
        }
        s.calls.push(name);
        Ok(s)
    }
}

impl Vcpu for TestVcpu {
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        Ok(VcpuExit::Shutdown)
    }
    fn regs(&self) -> Result<Regs> {
        Ok(self.call("regs")?.regs)
    }
    fn set_regs(&self, regs: &Regs) -> Result<()> {
        self.call("set_regs")?.regs = *regs;
        Ok(())
    }
    fn sregs(&self) -> Result<SpecialRegs> {
        Ok(self.call("sregs")?.sregs)
    }
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        self.call("set_sregs")?.sregs = *sregs;
        Ok(())
    }
    fn fpu(&self) -> Result<FpuState> {
        Ok(self.call("fpu")?.fpu)
    }
    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        self.call("set_fpu")?.fpu = *fpu;
        Ok(())
    }
    fn msrs(&self, entries: &mut [MsrEntry]) -> Result<usize> {
        let s = self.call("msrs")?;
        for (n, e) in entries.iter_mut().enumerate() {
            match s.msrs.iter().find(|m| m.index == e.index) {
                Some(m) => e.data = m.data,
                None => return Ok(n),
            }
        }
        Ok(entries.len())
    }
    fn set_msrs(&self, entries: &[MsrEntry]) -> Result<usize> {
        let mut s = self.call("set_msrs")?;
        for (n, e) in entries.iter().enumerate() {
            if s.refused_msrs.contains(&e.index) {
                return Ok(n);
            }
            s.msrs.retain(|m| m.index != e.index);
            s.msrs.push(*e);
        }
        Ok(entries.len())
    }
    fn set_cpuid(&self, entries: &[CpuIdEntry]) -> Result<()> {
        self.call("set_cpuid")?.cpuid = Some(entries.to_vec());
        Ok(())
    }
    fn lapic(&self) -> Result<LapicState> {
        Ok(self.call("lapic")?.lapic)
    }
    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        self.call("set_lapic")?.lapic = *lapic;
        Ok(())
    }
}
