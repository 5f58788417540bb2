//! Unit tests of the qcow2 layer on its own (the QEMU interop tests are in
//! `tests/qcow2_*.rs`).

use vm_memory::VolatileSlice;
use vmm_sys_util::tempdir::TempDir;

use super::*;

fn tempdir() -> TempDir {
    TempDir::new_with_prefix("/tmp/vmkit-qcow2-unit").unwrap()
}

#[test]
fn create_write_read_reopen() {
    let dir = tempdir();
    let path = dir.as_path().join("a.qcow2");
    Qcow2Image::create(
        &path,
        &CreateOptions {
            size: 8 << 20,
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let img = Qcow2Image::open(&path, &Qcow2Options::default()).unwrap();
    assert_eq!(img.size(), 8 << 20);
    let mut data: Vec<u8> = (0..10000u32).map(|i| (i * 7) as u8).collect();
    img.write_at(&VolatileSlice::from(&mut data[..]), 1000)
        .unwrap();
    let mut back = vec![0u8; 10000];
    img.read_at(&mut VolatileSlice::from(&mut back[..]), 1000)
        .unwrap();
    assert_eq!(back, data);
    img.close().unwrap();
    let img = Qcow2Image::open(
        &path,
        &Qcow2Options {
            read_only: true,
            backing: false,
            direct: false,
        },
    )
    .unwrap();
    let mut back = vec![0u8; 10000];
    img.read_at(&mut VolatileSlice::from(&mut back[..]), 1000)
        .unwrap();
    assert_eq!(back, data);
    let rep = img.check(false).unwrap();
    assert!(rep.is_clean(), "{rep:?}");
}
