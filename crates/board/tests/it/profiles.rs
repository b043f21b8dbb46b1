//! The board profiles of `firmware-configs/`: each parses and is consistent; mistakes are named.

use dinoedge_board::Profile;
use dinoedge_board::profile::{BUILTIN, Precision};

#[test]
fn every_builtin_profile_parses_and_matches_its_folder() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../firmware-configs");
    for (name, text) in BUILTIN {
        let p = Profile::builtin(name).unwrap();
        // the built-in copy is the file in the folder
        let (folder, file) = dinoedge_board::profile::file_of(name);
        let path = root.join(folder).join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, on_disk, "{name}");
        assert_eq!(Profile::load(path.to_str().unwrap()).unwrap(), p);
        assert!(
            p.board.target == "aarch64-unknown-linux-gnu" || name == "x86",
            "{name}"
        );
        // a Depth Anything profile is its board's, with the model and no head
        match name.strip_suffix("-da2") {
            Some(board) => {
                assert!(p.model().starts_with("da2-small"), "{name}");
                assert_eq!(p.run.head, None, "{name}");
                assert_eq!(p.board, Profile::builtin(board).unwrap().board, "{name}");
            }
            None => assert!(p.model().starts_with("vits14")),
        }
        // the folder has the rest: a README, a unit, boot lines
        for f in ["README.md", "dinoedge.service"] {
            assert!(root.join(folder).join(f).is_file(), "{name}/{f}");
        }
        let unit = std::fs::read_to_string(root.join(folder).join("dinoedge.service")).unwrap();
        assert!(unit.contains(&format!("run --board {folder} ")), "{name}");
        assert!(unit.contains("Restart=on-failure") && unit.contains("WantedBy=multi-user.target"));
    }
    // the Pis run Depth Anything in int8, the Jetson on its GPU
    assert_eq!(
        Profile::builtin("rpi5-da2").unwrap().model(),
        "da2-small-int8"
    );
    assert_eq!(
        Profile::builtin("rpi4-da2").unwrap().model(),
        "da2-small-int8"
    );
    let jetson = Profile::builtin("jetson-orin-nano-da2").unwrap();
    assert_eq!(
        (jetson.model(), jetson.run.runtime.as_deref()),
        ("da2-small", Some("cuda-or-cpu"))
    );
    assert_eq!(
        Profile::builtin("rpi4").unwrap().run.precision,
        Precision::Int8
    );
    assert_eq!(Profile::builtin("x86").unwrap().model(), "vits14");
    // every folder is built in
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut names: Vec<&str> = BUILTIN
        .map(|(n, _)| dinoedge_board::profile::file_of(n).0)
        .to_vec();
    names.sort();
    names.dedup();
    assert_eq!(folders, names);
}

#[test]
fn profile_mistakes_are_named() {
    let good = Profile::builtin("rpi5").unwrap();
    let text = BUILTIN[1].1;
    let cases = [
        (
            text.replace("threads = 4", "threads = 4\ncolour = 1"),
            "unknown field `colour`",
        ),
        (
            text.replace("\"224x224\"", "\"225x224\""),
            "multiples of 14",
        ),
        (text.replace("threads = 4", "threads = 0"), "at least 1"),
        (
            text.replace("threads = 4", "threads = 4\nworkers = 5"),
            "run.workers 5: from 1 to run.threads (4)",
        ),
        (
            text.replace("precision = \"int8\"", "precision = \"int4\""),
            "unknown variant",
        ),
        (
            text.replace("every = \"1\"", "every = \"sometimes\""),
            "run.every",
        ),
        (
            text.replace("target-cpu=cortex-a76'", "target-cpu=cortex-a72'"),
            "target-cpu=cortex-a76",
        ),
        (
            text.replace("every = \"1\"", "every = \"1\"\ngpio = [\"17=blink\"]"),
            "unknown action",
        ),
        (
            text.replace("threads = 4", "threads = 4\nruntime = \"gpu\""),
            "run.runtime \"gpu\": cpu, cuda or cuda-or-cpu",
        ),
    ];
    for (t, want) in cases {
        let e = Profile::parse(&t, "mine.toml").unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("mine.toml"), "{want}: {e}");
    }
    assert_eq!(Profile::parse(text, "x").unwrap(), good);
    let e = Profile::load("rpi6").unwrap_err().to_string();
    assert!(e.contains("rpi4, rpi5, jetson-orin-nano, x86"), "{e}");
    let e = Profile::load("nowhere/profile.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nowhere/profile.toml"), "{e}");
}

#[test]
fn a_profile_fills_only_what_the_user_left_unset() {
    let p = Profile::builtin("rpi5").unwrap();
    let mut empty = dinoedge_board::RunSettings::default();
    p.apply(&mut empty);
    assert_eq!(empty.model.as_deref(), Some("vits14-int8"));
    assert_eq!(empty.head.as_deref(), Some("vits14-nyu-linear"));
    assert_eq!(empty.threads, Some(4));
    assert_eq!(empty.resolution.as_deref(), Some("224x224"));
    assert_eq!(empty.camera.as_deref(), Some("csi://0"));
    assert_eq!(empty.sinks.len(), 2);
    assert_eq!(empty.listen.as_deref(), Some("0.0.0.0:8080"));
    assert_eq!(empty.every.as_deref(), Some("1"));
    assert_eq!(empty.workers, None);
    let two = Profile::parse(
        &BUILTIN[1]
            .1
            .replace("threads = 4", "threads = 4\nworkers = 2"),
        "two.toml",
    )
    .unwrap();
    let mut s = dinoedge_board::RunSettings::default();
    two.apply(&mut s);
    assert_eq!(s.workers, Some(2));
    let mut s = dinoedge_board::RunSettings {
        workers: Some(1),
        ..Default::default()
    };
    two.apply(&mut s);
    assert_eq!(s.workers, Some(1));

    let mut given = dinoedge_board::RunSettings {
        model: Some("my.onnx".into()),
        task_given: true,
        threads: Some(1),
        resolution: Some("308x448".into()),
        sinks: vec!["stdout".into()],
        ..Default::default()
    };
    p.apply(&mut given);
    assert_eq!(given.model.as_deref(), Some("my.onnx"));
    // a task without a head: the profile's head does not come in
    assert_eq!(given.head, None);
    assert_eq!(given.threads, Some(1));
    assert_eq!(given.resolution.as_deref(), Some("308x448"));
    assert_eq!(given.sinks, vec!["stdout".to_string()]);
    // what was not given still comes from the profile
    assert_eq!(given.camera.as_deref(), Some("csi://0"));
}
