//! qcow2 images against QEMU: what QEMU writes reads back identically,
//! what we write QEMU reads back identically (`qemu-img compare` with a raw
//! model of the same operations), and `qemu-img check` stays clean, across
//! versions, cluster sizes, refcount widths, lazy refcounts, compression,
//! backing chains, snapshots and zero clusters.

mod qcow2_common;

use std::path::Path;

use qcow2_common::*;
use vmkit_disk::{
    CreateOptions, DiskImage, Error, ImageFormat, Qcow2Image, Qcow2Options, check_image,
};

const RW: Qcow2Options = Qcow2Options {
    read_only: false,
    backing: false,
    direct: false,
};
const RW_BACKING: Qcow2Options = Qcow2Options {
    read_only: false,
    backing: true,
    direct: false,
};

#[derive(Clone, Copy, Debug)]
struct Config {
    version: u32,
    cluster_size: u64,
    refcount_bits: u32,
    lazy: bool,
    size: u64,
}

const MATRIX: &[Config] = &[
    Config {
        version: 2,
        cluster_size: 65536,
        refcount_bits: 16,
        lazy: false,
        size: 16 << 20,
    },
    Config {
        version: 2,
        cluster_size: 4096,
        refcount_bits: 16,
        lazy: false,
        size: 8 << 20,
    },
    Config {
        version: 3,
        cluster_size: 512,
        refcount_bits: 16,
        lazy: false,
        size: 8 << 20,
    },
    Config {
        version: 3,
        cluster_size: 4096,
        refcount_bits: 1,
        lazy: false,
        size: 8 << 20,
    },
    Config {
        version: 3,
        cluster_size: 65536,
        refcount_bits: 64,
        lazy: false,
        size: 16 << 20,
    },
    Config {
        version: 3,
        cluster_size: 2 << 20,
        refcount_bits: 16,
        lazy: false,
        size: 32 << 20,
    },
    Config {
        version: 3,
        cluster_size: 4096,
        refcount_bits: 16,
        lazy: true,
        size: 8 << 20,
    },
    Config {
        version: 3,
        cluster_size: 512,
        refcount_bits: 64,
        lazy: false,
        size: 4 << 20,
    },
];

fn qemu_create(img: &Path, c: &Config) {
    let compat = if c.version == 2 { "0.10" } else { "1.1" };
    let mut opts = format!(
        "compat={compat},cluster_size={},refcount_bits={}",
        c.cluster_size, c.refcount_bits
    );
    if c.lazy {
        opts.push_str(",lazy_refcounts=on");
    }
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            &path_str(img),
            &c.size.to_string(),
        ],
    );
}

/// QEMU writes patterns and zeros; returns the model of the disk.
fn qemu_fill(img: &Path, c: &Config) -> Vec<u8> {
    let mut model = vec![0u8; c.size as usize];
    let cs = c.cluster_size;
    let mut cmds = Vec::new();
    fn put(cmds: &mut Vec<String>, model: &mut [u8], pat: u8, off: u64, len: u64) {
        cmds.push(format!("write -P {pat:#x} {off} {len}"));
        model[off as usize..(off + len) as usize].fill(pat);
    }
    put(&mut cmds, &mut model, 0x11, 0, 65536);
    put(&mut cmds, &mut model, 0x22, 3 * cs + 512, 5 * 512);
    put(&mut cmds, &mut model, 0x33, c.size / 2 - 4096, 3 * cs);
    put(&mut cmds, &mut model, 0x44, c.size - 1024, 1024);
    // Zero clusters over written data (a zero flag with an offset in v3)
    // and over nothing.
    let z = c.size / 2 - 4096;
    cmds.push(format!("write -z {z} {}", cs));
    model[z as usize..(z + cs) as usize].fill(0);
    let zu = c.size / 4;
    cmds.push(format!("write -z -u {zu} {}", 2 * cs));
    model[zu as usize..(zu + 2 * cs) as usize].fill(0);
    put(&mut cmds, &mut model, 0x55, zu + cs, 512);
    qemu_io(img, "qcow2", &cmds);
    model
}

fn matrix_case(c: &Config, seed: u64) {
    let dir = tempdir();
    let img = join(&dir, "q.qcow2");

    // QEMU's image, QEMU's data.
    qemu_create(&img, c);
    let mut model = qemu_fill(&img, c);
    {
        let disk = Qcow2Image::open(&img, &RW).unwrap();
        assert_eq!(disk.size(), c.size);
        assert!(
            read_all(&disk) == model,
            "{c:?}: our read of QEMU's data differs"
        );
        let mut rng = Rng(seed);
        random_ops(&disk, &mut model, &mut rng, 120, c.cluster_size, None);
        assert!(read_all(&disk) == model, "{c:?}: our read-back differs");
        let rep = disk.check(false).unwrap();
        assert!(rep.is_clean(), "{c:?}: {rep:?}");
    }
    assert_clean(&img);
    assert_same_as_model(&img, &model, dir.as_path());

    // Our image, QEMU's data, then ours.
    let ours = join(&dir, "ours.qcow2");
    Qcow2Image::create(
        &ours,
        &CreateOptions {
            size: c.size,
            cluster_size: c.cluster_size,
            refcount_bits: c.refcount_bits,
            version: c.version,
            lazy_refcounts: c.lazy,
            backing: None,
        },
    )
    .unwrap();
    assert_clean(&ours);
    let info = ok("qemu-img", &["info", "--output=json", &path_str(&ours)]);
    let compat = if c.version == 2 { "0.10" } else { "1.1" };
    for want in [
        format!("\"virtual-size\": {}", c.size),
        format!("\"cluster-size\": {}", c.cluster_size),
        format!("\"compat\": \"{compat}\""),
        format!("\"refcount-bits\": {}", c.refcount_bits),
        "\"format\": \"qcow2\"".to_string(),
    ] {
        assert!(info.contains(&want), "{c:?}: info lacks {want}: {info}");
    }
    if c.version == 3 {
        assert!(
            info.contains(&format!("\"lazy-refcounts\": {}", c.lazy)),
            "{info}"
        );
    }
    let mut model = qemu_fill(&ours, c);
    {
        let disk = Qcow2Image::open(&ours, &RW).unwrap();
        let i = disk.info().unwrap();
        assert_eq!(
            (
                i.version,
                i.cluster_size,
                i.refcount_bits,
                i.virtual_size,
                i.lazy_refcounts
            ),
            (c.version, c.cluster_size, c.refcount_bits, c.size, c.lazy)
        );
        assert!(!i.dirty && !i.corrupt && i.backing_file.is_none());
        assert!(
            read_all(&disk) == model,
            "{c:?}: our read of QEMU's data differs"
        );
        let mut rng = Rng(seed ^ 0xabcdef);
        random_ops(&disk, &mut model, &mut rng, 120, c.cluster_size, None);
    }
    assert_clean(&ours);
    assert_same_as_model(&ours, &model, dir.as_path());
    let rep = check_image(&ours, false).unwrap();
    assert_eq!((rep.corruptions, rep.leaks), (0, 0), "{rep:?}");
}

#[test]
fn matrix_of_versions_cluster_sizes_and_refcount_widths() {
    let _serial = serial();
    if !have_qemu("matrix_of_versions_cluster_sizes_and_refcount_widths") {
        return;
    }
    for (i, c) in MATRIX.iter().enumerate() {
        let t = std::time::Instant::now();
        matrix_case(c, 0x1234_5678 + i as u64);
        println!("{c:?}: {:?}", t.elapsed());
    }
}

#[test]
fn compressed_images_read_back_and_take_writes() {
    let _serial = serial();
    if !have_qemu("compressed_images_read_back_and_take_writes") {
        return;
    }
    let dir = tempdir();
    let size = 4u64 << 20;
    let raw = join(&dir, "src.raw");
    // Compressible, varied data with holes.
    let mut src = vec![0u8; size as usize];
    let mut rng = Rng(99);
    for chunk in src.chunks_mut(8192).step_by(3) {
        let b = rng.next_u64() as u8;
        for (j, x) in chunk.iter_mut().enumerate() {
            *x = b.wrapping_add((j / 64) as u8);
        }
    }
    std::fs::write(&raw, &src).unwrap();
    for (ty, cs) in [
        ("zlib", 65536u64),
        ("zstd", 65536),
        ("zlib", 4096),
        ("zstd", 2 << 20),
    ] {
        let img = join(&dir, &format!("c-{ty}-{cs}.qcow2"));
        ok(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ty},cluster_size={cs}"),
                &path_str(&raw),
                &path_str(&img),
            ],
        );
        let ro = Qcow2Image::open(
            &img,
            &Qcow2Options {
                read_only: true,
                backing: false,
                direct: false,
            },
        )
        .unwrap();
        let info = ro.info().unwrap();
        assert_eq!(info.compression_type.to_string(), ty);
        assert!(read_all(&ro) == src, "{ty}/{cs}: decompressed data differs");
        drop(ro);
        let mut model = src.clone();
        {
            let disk = Qcow2Image::open(&img, &RW).unwrap();
            random_ops(&disk, &mut model, &mut Rng(cs ^ 7), 60, cs, None);
            assert!(read_all(&disk) == model);
        }
        assert_clean(&img);
        assert_same_as_model(&img, &model, dir.as_path());
    }
}

/// base (raw) <- mid (qcow2) <- top (qcow2), each with QEMU's writes.
#[test]
fn backing_chain_of_three() {
    let _serial = serial();
    if !have_qemu("backing_chain_of_three") {
        return;
    }
    let dir = tempdir();
    let size = 8u64 << 20;
    let base = join(&dir, "base.raw");
    let mut base_data = vec![0u8; size as usize];
    for (i, b) in base_data.iter_mut().enumerate() {
        *b = (i / 4096) as u8 | 0x80;
    }
    std::fs::write(&base, &base_data).unwrap();
    let mid = join(&dir, "mid.qcow2");
    let top = join(&dir, "top.qcow2");
    // Relative backing names: resolved against the image's directory.
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            &path_str(&mid),
        ],
    );
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 0xaa 4096 65536".into(),
            "write -z 1048576 131072".into(),
        ],
    );
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &path_str(&top),
        ],
    );
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0xbb 8192 1000".into(),
            "write -P 0xcc 2000000 70000".into(),
        ],
    );
    let mut model = qemu_contents(&top, dir.as_path());

    // Without opting in: refused, and the error says how.
    let err = Qcow2Image::open(&top, &RW).unwrap_err();
    assert!(matches!(err, Error::BackingNotEnabled { .. }), "{err}");
    assert!(err.to_string().contains("backing=on"), "{err}");

    {
        let disk = Qcow2Image::open(&top, &RW_BACKING).unwrap();
        let i = disk.info().unwrap();
        assert_eq!(i.backing_file.as_deref(), Some("mid.qcow2"));
        assert_eq!(i.backing_format.as_deref(), Some("qcow2"));
        assert!(read_all(&disk) == model, "chain read differs from QEMU's");
        // A v3 discard with a backing file leaves zeros, not the backing data.
        random_ops(&disk, &mut model, &mut Rng(5), 120, 4096, None);
        assert!(read_all(&disk) == model);
    }
    assert_clean(&top);
    assert_clean(&mid);
    assert_same_as_model(&top, &model, dir.as_path());
    // The backing files were not written.
    assert_eq!(std::fs::read(&base).unwrap(), base_data);
}

#[test]
fn v2_discard_with_backing_file_shows_the_backing_file() {
    let _serial = serial();
    if !have_qemu("v2_discard_with_backing_file_shows_the_backing_file") {
        return;
    }
    let dir = tempdir();
    let size = 4u64 << 20;
    let base = join(&dir, "base.raw");
    let base_data: Vec<u8> = (0..size).map(|i| (i / 512) as u8 | 1).collect();
    std::fs::write(&base, &base_data).unwrap();
    let top = join(&dir, "top.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,cluster_size=4096",
            "-b",
            &path_str(&base),
            "-F",
            "raw",
            &path_str(&top),
        ],
    );
    let mut model = base_data.clone();
    {
        let disk = Qcow2Image::open(&top, &RW_BACKING).unwrap();
        random_ops(&disk, &mut model, &mut Rng(77), 100, 4096, Some(&base_data));
        assert!(read_all(&disk) == model);
    }
    assert_clean(&top);
    assert_same_as_model(&top, &model, dir.as_path());
}

#[test]
fn shorter_backing_file_reads_as_zeros_past_its_end() {
    let _serial = serial();
    if !have_qemu("shorter_backing_file_reads_as_zeros_past_its_end") {
        return;
    }
    let dir = tempdir();
    let base = join(&dir, "short.qcow2");
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &path_str(&base), "1M"],
    );
    qemu_io(&base, "qcow2", &["write -P 0x77 0 1M".into()]);
    let top = join(&dir, "top.qcow2");
    Qcow2Image::create(
        &top,
        &CreateOptions {
            size: 4 << 20,
            cluster_size: 65536,
            backing: Some(("short.qcow2".into(), ImageFormat::Qcow2)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_clean(&top);
    let mut model = vec![0u8; 4 << 20];
    model[..1 << 20].fill(0x77);
    assert!(qemu_contents(&top, dir.as_path()) == model);
    {
        let disk = Qcow2Image::open(&top, &RW_BACKING).unwrap();
        assert!(read_all(&disk) == model);
        // A partial write in the cluster straddling the backing file's end.
        write(&disk, &mut model, (1 << 20) - 1024, &mut [0x99u8; 2048]);
        write(&disk, &mut model, (1 << 20) + 4096, &mut [0x98u8; 512]);
        random_ops(&disk, &mut model, &mut Rng(3), 60, 65536, None);
        assert!(read_all(&disk) == model);
    }
    assert_clean(&top);
    assert_same_as_model(&top, &model, dir.as_path());
}

#[test]
fn internal_snapshots_stay_intact() {
    let _serial = serial();
    if !have_qemu("internal_snapshots_stay_intact") {
        return;
    }
    for (cs, version) in [(65536u64, 3u32), (4096, 2)] {
        let dir = tempdir();
        let img = join(&dir, "snap.qcow2");
        let c = Config {
            version,
            cluster_size: cs,
            refcount_bits: 16,
            lazy: false,
            size: 8 << 20,
        };
        qemu_create(&img, &c);
        let snap_model = qemu_fill(&img, &c);
        ok("qemu-img", &["snapshot", "-c", "s1", &path_str(&img)]);
        let mut model = snap_model.clone();
        {
            let disk = Qcow2Image::open(&img, &RW).unwrap();
            assert_eq!(disk.info().unwrap().snapshot_count, 1);
            // Overwrite shared clusters, partially and fully, and discard.
            write(&disk, &mut model, 0, &mut [0xe1u8; 700]);
            write(&disk, &mut model, 65536 - 512, &mut vec![0xe2u8; 4096]);
            disk.discard(0, 1 << 20).unwrap();
            model_discard(&mut model, 0, 1 << 20, cs, None);
            random_ops(&disk, &mut model, &mut Rng(cs), 120, cs, None);
            let rep = disk.check(false).unwrap();
            assert!(rep.is_clean(), "{rep:?}");
        }
        assert_clean(&img);
        assert_same_as_model(&img, &model, dir.as_path());
        // The snapshot still holds what it held.
        ok("qemu-img", &["snapshot", "-a", "s1", &path_str(&img)]);
        assert_same_as_model(&img, &snap_model, dir.as_path());
        assert_clean(&img);
    }
}

#[test]
fn lazy_refcounts_set_the_dirty_bit_while_open() {
    let _serial = serial();
    if !have_qemu("lazy_refcounts_set_the_dirty_bit_while_open") {
        return;
    }
    let dir = tempdir();
    let img = join(&dir, "lazy.qcow2");
    Qcow2Image::create(
        &img,
        &CreateOptions {
            size: 4 << 20,
            cluster_size: 4096,
            lazy_refcounts: true,
            ..Default::default()
        },
    )
    .unwrap();
    let disk = Qcow2Image::open(&img, &RW).unwrap();
    let mut model = vec![0u8; 4 << 20];
    write(&disk, &mut model, 8192, &mut [1u8; 4096]);
    disk.flush().unwrap();
    let info = ok(
        "qemu-img",
        &["info", "-U", "--output=json", &path_str(&img)],
    );
    assert!(info.contains("\"dirty-flag\": true"), "{info}");
    disk.close().unwrap();
    let info = ok("qemu-img", &["info", "--output=json", &path_str(&img)]);
    assert!(info.contains("\"dirty-flag\": false"), "{info}");
    assert_clean(&img);
    assert_same_as_model(&img, &model, dir.as_path());
}

#[test]
fn qemu_cannot_write_while_we_hold_the_image_and_vice_versa() {
    let _serial = serial();
    if !have_qemu("qemu_cannot_write_while_we_hold_the_image_and_vice_versa") {
        return;
    }
    let dir = tempdir();
    let img = join(&dir, "locked.qcow2");
    Qcow2Image::create(
        &img,
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let disk = Qcow2Image::open(&img, &RW).unwrap();
    let out = run("qemu-io", &["-c", "write 0 4k", &path_str(&img)]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Failed to get \"write\" lock"), "{text}");
    // A second writable open here conflicts too.
    assert!(matches!(
        Qcow2Image::open(&img, &RW),
        Err(Error::InUse { .. })
    ));
    drop(disk);
    qemu_io(&img, "qcow2", &["write -P 0x5 0 4k".into()]);

    // QEMU holding it for writing keeps us out.
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("qemu-io")
        .arg(path_str(&img))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until qemu-io has the image open (its lock is visible).
    let mut held = false;
    for _ in 0..200 {
        if matches!(Qcow2Image::open(&img, &RW), Err(Error::InUse { .. })) {
            held = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.stdin.as_mut().unwrap().write_all(b"quit\n").unwrap();
    child.wait().unwrap();
    assert!(
        held,
        "a writable open succeeded while qemu-io held the image"
    );
    Qcow2Image::open(&img, &RW).unwrap();
}

#[test]
fn backing_chain_errors_are_clear() {
    let _serial = serial();
    let dir = tempdir();
    let a = join(&dir, "a.qcow2");
    let b = join(&dir, "b.qcow2");
    let mk = |p: &Path, backing: &str| {
        Qcow2Image::create(
            p,
            &CreateOptions {
                size: 1 << 20,
                backing: Some((backing.into(), ImageFormat::Qcow2)),
                ..Default::default()
            },
        )
        .unwrap();
    };
    // A loop.
    mk(&a, "b.qcow2");
    mk(&b, "a.qcow2");
    let err = Qcow2Image::open(&a, &RW_BACKING).unwrap_err();
    assert!(matches!(err, Error::BackingChain { .. }), "{err}");
    assert!(err.to_string().contains("loops"), "{err}");
    // Too deep.
    let n = vmkit_disk::qcow2::MAX_CHAIN_DEPTH + 2;
    Qcow2Image::create(
        join(&dir, "l0.qcow2"),
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 1..n {
        mk(
            &join(&dir, &format!("l{i}.qcow2")),
            &format!("l{}.qcow2", i - 1),
        );
    }
    let err = Qcow2Image::open(join(&dir, &format!("l{}.qcow2", n - 1)), &RW_BACKING).unwrap_err();
    assert!(err.to_string().contains("deeper than"), "{err}");
    // A shallower one opens.
    Qcow2Image::open(join(&dir, "l5.qcow2"), &RW_BACKING).unwrap();
    // A missing backing format is never probed.
    let c = join(&dir, "c.qcow2");
    mk(&c, "l0.qcow2");
    let mut bytes = std::fs::read(&c).unwrap();
    let pos = bytes
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .unwrap();
    // Turn the extension into an unknown one.
    bytes[pos..pos + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(&c, &bytes).unwrap();
    let err = Qcow2Image::open(&c, &RW_BACKING).unwrap_err();
    assert!(err.to_string().contains("no backing format"), "{err}");
    // Read-only opens of the middle of a chain, twice, coexist.
    let ro = Qcow2Options {
        read_only: true,
        backing: true,
        direct: false,
    };
    let _x = Qcow2Image::open(join(&dir, "l3.qcow2"), &ro).unwrap();
    let _y = Qcow2Image::open(join(&dir, "l4.qcow2"), &ro).unwrap();
}

#[test]
fn resize_grows_the_l1_table() {
    let _serial = serial();
    if !have_qemu("resize_grows_the_l1_table") {
        return;
    }
    let dir = tempdir();
    let img = join(&dir, "grow.qcow2");
    // 512-byte clusters: one L2 table maps 32 KiB, so 1 MiB needs 32 L1
    // entries and 64 MiB needs 2048 (8 clusters of L1).
    Qcow2Image::create(
        &img,
        &CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = vec![0u8; 1 << 20];
    {
        let disk = Qcow2Image::open(&img, &RW).unwrap();
        random_ops(&disk, &mut model, &mut Rng(11), 40, 512, None);
        disk.resize(64 << 20).unwrap();
        assert_eq!(disk.size(), 64 << 20);
        model.resize(64 << 20, 0);
        random_ops(&disk, &mut model, &mut Rng(12), 80, 512, None);
        assert!(matches!(
            disk.resize(1 << 20),
            Err(Error::Unsupported { .. })
        ));
    }
    assert_clean(&img);
    assert_same_as_model(&img, &model, dir.as_path());
}

#[test]
fn check_agrees_with_qemu_and_repairs_leaks() {
    let _serial = serial();
    if !have_qemu("check_agrees_with_qemu_and_repairs_leaks") {
        return;
    }
    let dir = tempdir();
    let img = join(&dir, "leaky.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            &path_str(&img),
            "4M",
        ],
    );
    qemu_io(&img, "qcow2", &["write -P 1 0 64k".into()]);
    // Leak 3 clusters: raise refcounts of unused clusters past the data.
    {
        let disk = Qcow2Image::open(&img, &RW).unwrap();
        let mut model = vec![0u8; 4 << 20];
        model[..65536].fill(1);
        // Allocate then free: no leak.
        write(&disk, &mut model, 1 << 20, &mut [2u8; 8192]);
        disk.discard(1 << 20, 8192).unwrap();
    }
    assert_clean(&img);
    let bytes = std::fs::read(&img).unwrap();
    // Refcount block is at the offset in the refcount table's first entry.
    let rt = u64::from_be_bytes(bytes[48..56].try_into().unwrap()) as usize;
    let rb = u64::from_be_bytes(bytes[rt..rt + 8].try_into().unwrap()) as usize;
    let mut patched = bytes.clone();
    for c in [900usize, 901, 902] {
        patched[rb + 2 * c..rb + 2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    std::fs::write(&img, &patched).unwrap();
    // The leaked clusters lie inside the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("3 leaked clusters"), "{out}");
    let rep = check_image(&img, false).unwrap();
    assert_eq!(
        (rep.leaks, rep.corruptions, rep.exit_code()),
        (3, 0, 3),
        "{rep:?}"
    );
    let rep = check_image(&img, true).unwrap();
    assert_eq!(
        (rep.leaks, rep.leaks_fixed, rep.exit_code()),
        (3, 3, 0),
        "{rep:?}"
    );
    assert_clean(&img);

    // A refcount too low: a corruption for both.
    let mut patched = std::fs::read(&img).unwrap();
    let c = 5usize; // some data cluster
    patched[rb + 2 * c..rb + 2 * c + 2].copy_from_slice(&0u16.to_be_bytes());
    std::fs::write(&img, &patched).unwrap();
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 2, "{out}");
    let rep = check_image(&img, false).unwrap();
    assert!(rep.corruptions > 0 && rep.exit_code() == 2, "{rep:?}");
}
