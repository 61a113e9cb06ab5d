//! Damaged or unusable topic metadata.

use super::*;

// ---------------------------------------------------------------------------------------
// (c) Topic metadata
// ---------------------------------------------------------------------------------------

/// Runs `spoold` on `data` expecting it to refuse to start; returns (exit code, stderr).
fn start_refused(data: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("SPOOL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoold");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spoold started on damaged metadata instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("spoold exited with {status}; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "refusing is not panicking:\n{stderr}"
    );
    (status.code(), stderr)
}

fn assert_refused_naming(data: &Path, meta: &Path) {
    let (code, stderr) = start_refused(data);
    assert_eq!(code, Some(1), "spoold exits 1:\n{stderr}");
    assert!(
        stderr.contains(&*meta.to_string_lossy()),
        "the message names {}:\n{stderr}",
        meta.display()
    );
    assert!(
        stderr.contains("restore the file from a backup")
            && stderr.contains("delete the topic's directory"),
        "the message says what to do:\n{stderr}"
    );
}

#[tokio::test]
async fn damaged_topic_metadata_refuses_to_start_naming_the_file_and_the_fix() {
    let seed = seed("damaged_topic_metadata");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broker = filled_broker(2, 30).await;
    let data = broker.data_dir().to_path_buf();
    let meta = data.join("topics").join(TOPIC).join("topic.json");
    let pristine = fs::read(&meta).unwrap();
    assert_verify_clean(&data);
    for round in 0..6 {
        // Truncations, and flips that leave the file unparseable. (A flip that leaves
        // valid JSON is the subject of the test below.)
        let damaged = loop {
            let mut d = pristine.clone();
            if round % 2 == 0 {
                d.truncate(rng.random_range(0..d.len()));
            } else {
                for _ in 0..rng.random_range(1..=3) {
                    let p = rng.random_range(0..d.len());
                    d[p] ^= rng.random_range(1..=255u8);
                }
            }
            if serde_json::from_slice::<serde_json::Value>(&d).is_err() {
                break d;
            }
        };
        fs::write(&meta, &damaged).unwrap();
        eprintln!(
            "round {round}: topic.json is now {:?}",
            String::from_utf8_lossy(&damaged)
        );
        assert_refused_naming(&data, &meta);
        let out = verify(&data);
        assert_eq!(out.status.code(), Some(1), "verify flags the metadata");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&*meta.to_string_lossy()));
        // Refusing changed nothing: the logs are all still there.
        assert!(partition_dir(&data, 1).is_dir());
    }
    fs::write(&meta, &pristine).unwrap();
    assert_verify_clean(&data);
    broker.restart();
    let mut c = broker.client().await;
    for p in 0..2 {
        let all = read_to_end(&mut c, TOPIC, p, 0).await;
        assert_eq!(all.len(), 300);
        for (o, r) in all.iter().enumerate() {
            assert_record_intact(r, o as u64);
        }
    }
}

#[tokio::test]
async fn topic_metadata_with_a_damaged_name_or_version_says_what_to_do() {
    let broker = filled_broker(1, 3).await;
    let data = broker.data_dir().to_path_buf();
    let meta = data.join("topics").join(TOPIC).join("topic.json");
    let pristine = String::from_utf8(fs::read(&meta).unwrap()).unwrap();
    let version = pristine.replacen("\"version\": 1", "\"version\": 3", 1);
    let name = pristine.replacen("\"name\": \"t\"", "\"name\": \"u\"", 1);
    for damaged in [version, name] {
        assert_ne!(damaged, pristine);
        fs::write(&meta, &damaged).unwrap();
        assert_refused_naming(&data, &meta);
    }
}

#[tokio::test]
async fn a_bit_flip_in_a_topic_metadata_value_is_never_accepted_silently() {
    let mut broker = filled_broker(3, 3).await;
    let data = broker.data_dir().to_path_buf();
    let meta = data.join("topics").join(TOPIC).join("topic.json");
    let mut bytes = fs::read(&meta).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("\"partitions\": 3").expect("pretty JSON") + "\"partitions\": ".len();
    bytes[at] ^= 0x02; // '3' (0x33) -> '1' (0x31)
    fs::write(&meta, &bytes).unwrap();
    let out = verify(&data);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify notices partitions 1 and 2 that topic.json no longer lists"
    );
    // Either refused, or all three partitions still served.
    let (code, stderr) = start_refused_or_serving(&data);
    if code.is_some() {
        assert!(stderr.contains(&*meta.to_string_lossy()), "{stderr}");
    } else {
        broker.restart();
        let mut c = broker.client().await;
        let info = describe(&mut c, TOPIC).await;
        assert_eq!(info.partitions, 3, "a bit flip changed the partition count");
    }
}

/// Like [`start_refused`] but a broker that serves is stopped and reported as `None`.
fn start_refused_or_serving(data: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoold");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut text = String::new();
    let mut served = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let Ok(line) = line else { break };
        text.push_str(&line);
        text.push('\n');
        if line.contains("serving") {
            served = true;
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().expect("wait for spoold");
    (if served { None } else { status.code() }, text)
}
