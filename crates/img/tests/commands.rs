//! create, info, check, convert and resize, checked against qemu-img on the
//! same images.

mod common;

use common::*;

#[test]
fn raw_create_is_seen_by_qemu_img_and_info_prints_the_same() {
    if !have_qemu("raw_create_is_seen_by_qemu_img_and_info_prints_the_same") {
        return;
    }
    let dir = tempdir();
    let d = dir.as_path();
    for (size, bytes) in [("1M", 1u64 << 20), ("3G", 3 << 30), ("1000", 1024)] {
        let r = vmkit(d, &["create", "-f", "raw", "a.raw", size]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(
            r.stdout,
            format!(
                "Formatting 'a.raw', fmt=raw size={}\n",
                if size == "1000" { 1000 } else { bytes }
            )
        );
        let q = qemu(d, &["info", "--output=json", "-f", "raw", "a.raw"]);
        assert_eq!(json_u64(&q.stdout, "virtual-size"), Some(bytes));
        assert_eq!(json_str(&q.stdout, "format").as_deref(), Some("raw"));
        // Sparse.
        assert!(allocated(&path(&dir, "a.raw")) <= 4096);
        for args in [
            &["info", "a.raw"][..],
            &["info", "-f", "raw", "a.raw"],
            &["info", "--output=json", "a.raw"],
            &["info", "--output", "json", "-f", "raw", "a.raw"],
        ] {
            let ours = vmkit(d, args);
            let theirs = qemu(d, args);
            assert_eq!(ours.code, 0, "{ours:?}");
            assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
        }
    }
    // qemu-img cannot check raw images, and says so with exit code 63.
    let ours = vmkit(d, &["check", "-f", "raw", "a.raw"]);
    let theirs = qemu(d, &["check", "-f", "raw", "a.raw"]);
    assert_eq!((ours.code, theirs.code), (63, 63));
    assert_eq!(ours.stdout, theirs.stdout);
    assert_eq!(
        ours.stderr,
        "vmkit-img: This image format does not support checks\n"
    );
}

#[test]
fn qcow2_create_passes_qemu_img_check_for_every_layout() {
    if !have_qemu("qcow2_create_passes_qemu_img_check_for_every_layout") {
        return;
    }
    let dir = tempdir();
    let d = dir.as_path();
    for (opts, cluster, size) in [
        ("cluster_size=512", 512u64, "64M"),
        ("cluster_size=4096", 4096, "1G"),
        ("cluster_size=64k", 65536, "10G"),
        ("cluster_size=2M", 2 << 20, "100G"),
        ("compat=0.10", 65536, "1G"),
        ("refcount_bits=8,lazy_refcounts=on", 65536, "1G"),
        ("refcount_bits=64,cluster_size=16k", 16384, "4G"),
    ] {
        let r = vmkit(d, &["create", "-f", "qcow2", "-o", opts, "q.qcow2", size]);
        assert_eq!(r.code, 0, "{opts}: {r:?}");
        let theirs = qemu(d, &["create", "-f", "qcow2", "-o", opts, "ref.qcow2", size]);
        // The same Formatting line qemu-img prints.
        assert_eq!(
            r.stdout.replace("q.qcow2", "ref.qcow2"),
            theirs.stdout,
            "{opts}"
        );

        let c = qemu(d, &["check", "q.qcow2"]);
        assert_eq!(c.code, 0, "{opts}: {c:?}");
        let info = qemu(d, &["info", "--output=json", "q.qcow2"]);
        assert_eq!(json_str(&info.stdout, "format").as_deref(), Some("qcow2"));
        assert_eq!(
            json_u64(&info.stdout, "cluster-size"),
            Some(cluster),
            "{opts}"
        );
        let bytes = info.stdout.contains(&format!(
            "\"virtual-size\": {}",
            vmkit_img::size::parse_size(size).unwrap()
        ));
        assert!(bytes, "{opts}: {}", info.stdout);
        if opts.contains("compat=0.10") {
            assert!(info.stdout.contains("\"compat\": \"0.10\""));
        }
        if opts.contains("lazy_refcounts=on") {
            assert!(info.stdout.contains("\"lazy-refcounts\": true"));
            assert!(info.stdout.contains("\"refcount-bits\": 8"));
        }
        // Our info prints what qemu-img prints, on our image and on theirs.
        for file in ["q.qcow2", "ref.qcow2"] {
            for output in ["human", "json"] {
                let args = ["info", "--output", output, file];
                let ours = vmkit(d, &args);
                assert_eq!(ours.code, 0, "{ours:?}");
                assert_eq!(ours.stdout, qemu(d, &args).stdout, "{opts} {file} {output}");
            }
        }
        // And our check agrees that it is clean.
        let ours = vmkit(d, &["check", "q.qcow2"]);
        assert_eq!(ours.code, 0, "{ours:?}");
        assert_eq!(ours.stdout, c.stdout);
    }
}

#[test]
fn qcow2_with_backing_file_is_read_by_qemu_img() {
    if !have_qemu("qcow2_with_backing_file_is_read_by_qemu_img") {
        return;
    }
    let dir = tempdir();
    let d = dir.as_path();
    assert_eq!(
        qemu(d, &["create", "-q", "-f", "raw", "base.raw", "8M"]).code,
        0
    );
    qemu_io(d, &["-f", "raw", "-c", "write -P 0x5a 1M 64k", "base.raw"]);
    // The size comes from the backing file when not given.
    let r = vmkit(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(qemu(d, &["check", "top.qcow2"]).code, 0);
    let info = qemu(d, &["info", "--output=json", "top.qcow2"]);
    assert_eq!(json_u64(&info.stdout, "virtual-size"), Some(8 << 20));
    assert_eq!(
        json_str(&info.stdout, "backing-filename").as_deref(),
        Some("base.raw")
    );
    assert_eq!(
        json_str(&info.stdout, "backing-filename-format").as_deref(),
        Some("raw")
    );
    // qemu-img sees the backing data through our overlay.
    assert_eq!(qemu(d, &["compare", "top.qcow2", "base.raw"]).code, 0);
    for args in [
        &["info", "top.qcow2"][..],
        &["info", "--backing-chain", "top.qcow2"],
        &["info", "--backing-chain", "--output=json", "top.qcow2"],
    ] {
        let ours = vmkit(d, args);
        assert_eq!(ours.code, 0, "{ours:?}");
        assert_eq!(ours.stdout, qemu(d, args).stdout, "{args:?}");
    }
    // Like qemu-img, a backing file needs its format.
    let r = vmkit(d, &["create", "-f", "qcow2", "-b", "base.raw", "x.qcow2"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("Backing file specified without backing format"),
        "{r:?}"
    );
    assert!(!path(&dir, "x.qcow2").exists());
}

/// A qcow2 image with 256 KiB of data written by qemu-io, and a file long
/// enough to hold two more clusters.
fn image_with_data(dir: &TempDir, name: &str) {
    let d = dir.as_path();
    assert_eq!(
        qemu(d, &["create", "-q", "-f", "qcow2", name, "64M"]).code,
        0
    );
    qemu_io(d, &["-f", "qcow2", "-c", "write -P 0x11 0 256k", name]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path(dir, name))
        .unwrap();
    f.set_len(12 * 65536).unwrap();
}

#[test]
fn check_reports_and_exit_codes_match_qemu_img() {
    if !have_qemu("check_reports_and_exit_codes_match_qemu_img") {
        return;
    }
    let dir = tempdir();
    let d = dir.as_path();
    image_with_data(&dir, "clean.qcow2");
    image_with_data(&dir, "leaky.qcow2");
    // Clusters 9 and 10 are past every used cluster: counting them leaks them.
    patch_refcount(&path(&dir, "leaky.qcow2"), 9, 1);
    patch_refcount(&path(&dir, "leaky.qcow2"), 10, 1);
    image_with_data(&dir, "corrupt.qcow2");
    // Cluster 4 is the L2 table: a zero refcount for a used cluster.
    patch_refcount(&path(&dir, "corrupt.qcow2"), 4, 0);

    for (file, code) in [("clean.qcow2", 0), ("leaky.qcow2", 3), ("corrupt.qcow2", 2)] {
        for output in ["human", "json"] {
            let args = ["check", "--output", output, file];
            let theirs = qemu(d, &args);
            assert_eq!(theirs.code, code, "{theirs:?}");
            let ours = vmkit(d, &args);
            assert_eq!(ours.code, code, "{file} {output}: {ours:?}");
            assert_eq!(ours.stdout, theirs.stdout, "{file} {output}");
            // The per-problem lines too ("Leaked cluster 9 ...", "ERROR ...").
            assert_eq!(ours.stderr, theirs.stderr, "{file} {output}");
        }
    }

    // Repairing leaks: the same report, and qemu-img finds the result clean.
    for (tool, file) in [("qemu", "leaky-q.qcow2"), ("vmkit", "leaky-v.qcow2")] {
        std::fs::copy(path(&dir, "leaky.qcow2"), path(&dir, file)).unwrap();
        let _ = tool;
    }
    let theirs = qemu(d, &["check", "-r", "leaks", "leaky-q.qcow2"]);
    let ours = vmkit(d, &["check", "-r", "leaks", "leaky-v.qcow2"]);
    assert_eq!((ours.code, theirs.code), (0, 0), "{ours:?}");
    // "Leaked cluster 9 ..." for each leak, then "Repairing cluster 9 ...".
    assert_eq!(ours.stderr, theirs.stderr);
    assert_eq!(ours.stdout, theirs.stdout);
    assert!(ours.stdout.starts_with(
        "The following inconsistencies were found and repaired:\n\n    2 leaked clusters\n    0 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on the image.\n"
    ), "{}", ours.stdout);
    assert_eq!(qemu(d, &["check", "leaky-v.qcow2"]).code, 0);
    assert_eq!(
        qemu(d, &["compare", "leaky-v.qcow2", "clean.qcow2"]).code,
        0
    );

    // A check without -r changes nothing.
    let before = std::fs::read(path(&dir, "corrupt.qcow2")).unwrap();
    vmkit(d, &["check", "corrupt.qcow2"]);
    assert!(std::fs::read(path(&dir, "corrupt.qcow2")).unwrap() == before);
}

#[test]
fn convert_round_trip_is_identical_and_sparse() {
    if !have_qemu("convert_round_trip_is_identical_and_sparse") {
        return;
    }
    let dir = tempdir();
    let d = dir.as_path();
    assert_eq!(
        qemu(d, &["create", "-q", "-f", "raw", "src.raw", "256M"]).code,
        0
    );
    for cmd in [
        "write -P 0x11 0 64k",
        "write -P 0x22 1000k 5k",
        "write -P 0x33 100M 1M",
        "write -P 0x44 255M 1M",
        "write -z 50M 1M",
    ] {
        qemu_io(d, &["-f", "raw", "-c", cmd, "src.raw"]);
    }
    let r = vmkit(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "mid.qcow2",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(qemu(d, &["check", "mid.qcow2"]).code, 0);
    let c = qemu(
        d,
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            "src.raw",
            "mid.qcow2",
        ],
    );
    assert_eq!(c.code, 0, "{c:?}");
    // About 2.2 MiB of data: the qcow2 holds that, not 256 MiB.
    assert!(allocated(&path(&dir, "mid.qcow2")) < 4 << 20);
    let map = qemu(d, &["map", "--output=json", "mid.qcow2"]);
    assert!(map.stdout.contains("\"data\": false"), "{}", map.stdout);

    let r = vmkit(d, &["convert", "-O", "raw", "mid.qcow2", "back.raw"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        qemu(
            d,
            &["compare", "-f", "raw", "-F", "raw", "src.raw", "back.raw"]
        )
        .code,
        0
    );
    assert!(
        std::fs::read(path(&dir, "src.raw")).unwrap()
            == std::fs::read(path(&dir, "back.raw")).unwrap()
    );
    assert!(allocated(&path(&dir, "back.raw")) < 4 << 20);

    // qcow2 to qcow2 with another cluster size.
    let r = vmkit(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "mid.qcow2",
            "small.qcow2",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(qemu(d, &["check", "small.qcow2"]).code, 0);
    assert_eq!(qcow2_cluster_size(&path(&dir, "small.qcow2")), 4096);
    assert_eq!(qemu(d, &["compare", "src.raw", "small.qcow2"]).code, 0);
}

#[test]
fn raw_convert_and_self_convert() {
    if !have_qemu("raw_convert_and_self_convert") {
        return;
    }
    let dir = tempdir();
    let d = dir.as_path();
    assert_eq!(
        qemu(d, &["create", "-q", "-f", "raw", "src.raw", "64M"]).code,
        0
    );
    qemu_io(d, &["-f", "raw", "-c", "write -P 0x7 3M 200k", "src.raw"]);
    let r = vmkit(
        d,
        &["convert", "-f", "raw", "-O", "raw", "src.raw", "dst.raw"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        std::fs::read(path(&dir, "src.raw")).unwrap()
            == std::fs::read(path(&dir, "dst.raw")).unwrap()
    );
    assert!(allocated(&path(&dir, "dst.raw")) <= 256 << 10);
    // Converting onto itself is refused, and the data stays.
    let r = vmkit(d, &["convert", "-f", "raw", "src.raw", "src.raw"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert_eq!(
        qemu(
            d,
            &["compare", "-f", "raw", "-F", "raw", "src.raw", "dst.raw"]
        )
        .code,
        0
    );
}

#[test]
fn resize_is_seen_by_qemu_img() {
    if !have_qemu("resize_is_seen_by_qemu_img") {
        return;
    }
    let dir = tempdir();
    let d = dir.as_path();
    assert_eq!(
        qemu(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]).code,
        0
    );
    qemu_io(d, &["-f", "raw", "-c", "write -P 0x9 0 1M", "r.raw"]);
    let r = vmkit(d, &["resize", "-f", "raw", "r.raw", "+1M"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Image resized.\n"),
        "{r:?}"
    );
    let info = qemu(d, &["info", "--output=json", "-f", "raw", "r.raw"]);
    assert_eq!(json_u64(&info.stdout, "virtual-size"), Some(2 << 20));
    // Shrinking needs --shrink, as with qemu-img; the data is kept without it.
    let ours = vmkit(d, &["resize", "-f", "raw", "r.raw", "512k"]);
    let theirs = qemu(d, &["resize", "-f", "raw", "r.raw", "512k"]);
    assert_eq!((ours.code, theirs.code), (1, 1));
    assert_eq!(
        ours.stderr,
        "vmkit-img: Use the --shrink option to perform a shrink operation.\n"
    );
    assert_eq!(
        std::fs::metadata(path(&dir, "r.raw")).unwrap().len(),
        2 << 20
    );
    let r = vmkit(d, &["resize", "-f", "raw", "--shrink", "r.raw", "-1M"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read(path(&dir, "r.raw")).unwrap(),
        vec![9u8; 1 << 20]
    );

    assert_eq!(
        qemu(d, &["create", "-q", "-f", "qcow2", "q.qcow2", "1G"]).code,
        0
    );
    qemu_io(d, &["-c", "write -P 0x3 1023M 1M", "q.qcow2"]);
    let r = vmkit(d, &["resize", "q.qcow2", "+1G"]);
    assert_eq!(r.code, 0, "{r:?}");
    let info = qemu(d, &["info", "--output=json", "q.qcow2"]);
    assert_eq!(json_u64(&info.stdout, "virtual-size"), Some(2 << 30));
    assert_eq!(qemu(d, &["check", "q.qcow2"]).code, 0);
    qemu_io(
        d,
        &[
            "-c",
            "read -P 0x3 1023M 1M",
            "-c",
            "read -P 0 1024M 1M",
            "q.qcow2",
        ],
    );
}

#[test]
fn bad_input_is_one_line_exit_1_and_changes_nothing() {
    let dir = tempdir();
    let d = dir.as_path();
    std::fs::write(path(&dir, "data.raw"), vec![0x42u8; 8192]).unwrap();
    for args in [
        &["info", "missing.img"][..],
        &["info", "-f", "vmdk", "data.raw"],
        &["info", "--output=xml", "data.raw"],
        &["create", "-f", "raw", "data.raw", "1Q"],
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "cluster_size=4k",
            "data.raw",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=3000",
            "new.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=3",
            "new.qcow2",
            "1M",
        ],
        &["resize", "-f", "raw", "data.raw", "-1M"],
        &["resize", "-f", "raw", "data.raw", "x"],
        &["convert", "-O", "vmdk", "data.raw", "out.img"],
        &["check", "-r", "bogus", "data.raw"],
        &["bench", "-f", "raw", "-c", "1", "-o", "8192", "data.raw"],
        &["bench", "-f", "qcow2", "-c", "1", "data.raw"],
        &["frobnicate"],
        &["create"],
    ] {
        let r = vmkit(d, args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("vmkit-img: "), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
        assert_eq!(
            std::fs::read(path(&dir, "data.raw")).unwrap(),
            vec![0x42u8; 8192],
            "{args:?}"
        );
    }
    assert!(!path(&dir, "out.img").exists());
}
