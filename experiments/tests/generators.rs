//! Each generator: exact structure (positions, label placement, value ranges) over many samples,
//! and the same output for the same seed.

use experiments::config::{self, RunConfig};
use experiments::tasks::{Batch, IGNORE, Task};

use crate::common::*;

fn task(overrides: &[&str]) -> (RunConfig, Task) {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let c = config::resolve("", "test", &o).unwrap();
    let t = Task::new(&c).unwrap();
    (c, t)
}

fn rows(b: &Batch) -> impl Iterator<Item = (&[u32], &[i64])> {
    b.ids.chunks(b.l).zip(b.targets.chunks(b.l))
}

/// Same seed and step: the same batch; another step or seed: another batch; eval data differs
/// from training data and does not depend on the number of training steps.
fn assert_deterministic(t: &Task, length: usize) {
    let a = t.train_batch(7, 3, 0, 4, length);
    assert_eq!(a, t.train_batch(7, 3, 0, 4, length));
    assert_ne!(a, t.train_batch(7, 4, 0, 4, length));
    assert_ne!(a, t.train_batch(7, 3, 1, 4, length));
    assert_ne!(a, t.train_batch(8, 3, 0, 4, length));
    let e = t.eval_batch(7, 0, 2, 4, length);
    assert_eq!(e, t.eval_batch(7, 0, 2, 4, length));
    assert_ne!(e, a);
}

#[test]
fn selective_copying_structure() {
    let (a, m, l) = (16u32, 16usize, 64usize);
    let (_, t) = task(&["task.kind=selective_copying", "task.seq_len=64"]);
    assert_eq!(t.input_len(l), l + 2 * m);
    let batch = t.train_batch(1, 1, 0, 64, l);
    assert_eq!((batch.b, batch.l), (64, l + 2 * m));
    for (ids, targets) in rows(&batch) {
        let data: Vec<(usize, u32)> = ids[..l + m]
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, x)| x != 0)
            .collect();
        assert_eq!(
            data.len(),
            m,
            "M data tokens among the first L + M positions, noise elsewhere"
        );
        assert!(
            data.iter().all(|&(_, x)| (1..=a - 2).contains(&x)),
            "data tokens in 1..=A-2"
        );
        assert!(
            ids[l + m..].iter().all(|&x| x == a - 1),
            "M markers A-1 at the end"
        );
        assert!(
            targets[..l + m].iter().all(|&x| x == IGNORE),
            "nothing scored before the markers"
        );
        let want: Vec<i64> = data.iter().map(|&(_, x)| x as i64).collect();
        assert_eq!(
            &targets[l + m..],
            &want[..],
            "targets are the data tokens in order"
        );
    }
    assert_eq!(batch.num_targets(), 64 * m);
    assert_deterministic(&t, l);
}

#[test]
fn induction_heads_structure() {
    let (v, l) = (16u32, 40usize);
    let (_, t) = task(&["task.kind=induction_heads", "task.seq_len=40"]);
    let trigger = v - 1;
    let mut positions = std::collections::BTreeSet::new();
    for step in 0..20 {
        let batch = t.train_batch(2, step, 0, 32, l);
        for (ids, targets) in rows(&batch) {
            let triggers: Vec<usize> = (0..l).filter(|&i| ids[i] == trigger).collect();
            assert_eq!(
                triggers.len(),
                2,
                "one trigger inside, one at the end: {ids:?}"
            );
            let p = triggers[0];
            assert!(p <= l - 3 && triggers[1] == l - 1);
            positions.insert(p);
            assert!(ids.iter().all(|&x| x <= trigger));
            assert!(
                targets[..l - 1].iter().all(|&x| x == IGNORE),
                "only the last position is scored"
            );
            assert_eq!(
                targets[l - 1],
                ids[p + 1] as i64,
                "the answer follows the first trigger"
            );
        }
    }
    assert!(
        positions.len() > l / 2,
        "the trigger moves around: {positions:?}"
    );
    assert_deterministic(&t, l);
    // Longer test sequences keep the same structure.
    let long = t.eval_batch(0, 0, 1, 2, 1000);
    assert_eq!(long.l, 1000);
    assert_eq!(long.num_targets(), 2);
}

#[test]
fn mqar_structure() {
    let (v, l, k) = (128u32, 64usize, 8usize);
    let (_, t) = task(&[
        "task.kind=mqar",
        "task.seq_len=64",
        "task.vocab_size=128",
        "task.mqar.num_pairs=8",
    ]);
    let mut first_gap_zero = 0;
    let n = 512;
    let batch = t.train_batch(3, 1, 0, n, l);
    for (ids, targets) in rows(&batch) {
        let keys: Vec<u32> = (0..k).map(|i| ids[2 * i]).collect();
        let values: Vec<u32> = (0..k).map(|i| ids[2 * i + 1]).collect();
        assert!(
            keys.iter().all(|&x| (1..v / 2).contains(&x)),
            "keys in [1, V/2): {keys:?}"
        );
        assert!(
            values.iter().all(|&x| (v / 2..v).contains(&x)),
            "values in [V/2, V): {values:?}"
        );
        let distinct =
            |xs: &[u32]| xs.iter().collect::<std::collections::BTreeSet<_>>().len() == xs.len();
        assert!(distinct(&keys) && distinct(&values));
        assert!(ids.iter().all(|&x| x < v));
        let queries: Vec<usize> = (0..l).filter(|&i| targets[i] != IGNORE).collect();
        assert_eq!(queries.len(), k, "one label per key");
        let mut queried = Vec::new();
        for &q in &queries {
            assert!(
                q >= 2 * k && (q - 2 * k) % 2 == 0,
                "queries at 2K + 2·gap: {q}"
            );
            let key = ids[q];
            let i = keys
                .iter()
                .position(|&x| x == key)
                .expect("a query repeats a key");
            assert_eq!(targets[q], values[i] as i64, "the label is the key's value");
            queried.push(i);
        }
        queried.sort_unstable();
        assert_eq!(
            queried,
            (0..k).collect::<Vec<_>>(),
            "every key is queried once"
        );
        first_gap_zero += (targets[2 * k] != IGNORE) as usize;
    }
    // p(gap 0) among 24 gaps with a = 0.01 is ~0.25 per draw; over 8 draws it is nearly always taken.
    assert!(
        first_gap_zero > n * 3 / 4,
        "power-law gaps favour short ones: {first_gap_zero} of {n}"
    );
    assert_deterministic(&t, l);
}

#[test]
fn bytes_windows() {
    let dir = tmp_dir("bytes-gen");
    let mut x = 12345u64;
    let text: String = (0..2000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (b'a' + (x >> 60) as u8) as char
        })
        .collect();
    let path = write(&dir, "text.txt", &text);
    let (_, t) = task(&[
        "task.kind=bytes",
        &format!("task.bytes.path={path:?}"),
        "task.seq_len=16",
        "task.bytes.val_fraction=0.25",
    ]);
    let bytes = text.as_bytes();
    let batch = t.train_batch(0, 1, 0, 8, 16);
    for (ids, targets) in rows(&batch) {
        let start = bytes
            .windows(16)
            .position(|w| w.iter().zip(ids).all(|(&b, &i)| b as u32 == i))
            .expect("a window of the text");
        assert!(
            start + 17 <= 1500,
            "training windows come from the first 75%"
        );
        for j in 0..16 {
            assert_eq!(
                targets[j],
                bytes[start + j + 1] as i64,
                "targets are the next bytes"
            );
        }
    }
    let val = t.eval_batch(0, 0, 1, 4, 16);
    let val_text = &bytes[1500..];
    assert_eq!(
        val.ids[0], val_text[0] as u32,
        "the first validation window starts the split"
    );
    assert_eq!(
        *val.targets.last().unwrap(),
        *val_text.last().unwrap() as i64,
        "the last one ends it"
    );
    assert_deterministic(&t, 16);
}

#[test]
fn bytes_hold_out_whole_documents_of_a_folder() {
    let dir = tmp_dir("bytes-docs");
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    // Ten documents of distinct letters, so that every window tells which one it came from.
    let texts: Vec<String> = (0..10u8)
        .map(|i| {
            let letter = (b'a' + i) as char;
            (0..200 + 17 * i as usize)
                .map(|j| if j % 7 == 0 { '\n' } else { letter })
                .collect()
        })
        .collect();
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(docs.join(format!("doc{i}.txt")), t).unwrap();
    }
    std::fs::write(docs.join(".hidden"), "not a document").unwrap();
    let (_, t) = task(&[
        "task.kind=bytes",
        &format!("task.bytes.path={:?}", docs.display().to_string()),
        "task.seq_len=16",
        "task.bytes.val_fraction=0.25",
    ]);
    let Task::Bytes(corpus) = &t else {
        panic!("a byte corpus")
    };
    // Every 4th document in name order is held out: doc3 and doc7.
    let held: Vec<bool> = corpus.pieces.iter().map(|p| p.held_out).collect();
    let expect: Vec<bool> = (0..10).map(|i| i % 4 == 3).collect();
    assert_eq!(held, expect);
    // The pieces tile the source (the documents concatenated in name order) without overlap.
    let mut next = 0;
    for (p, text) in corpus.pieces.iter().zip(&texts) {
        assert_eq!(p.source, next..next + text.len(), "{}", p.file.display());
        next = p.source.end;
    }
    let side = |held_out: bool| -> String {
        (0..10)
            .filter(|&i| (i % 4 == 3) == held_out)
            .map(|i| texts[i].as_str())
            .collect()
    };
    assert_eq!(corpus.train, side(false).into_bytes());
    assert_eq!(corpus.val, side(true).into_bytes());
    let training: Vec<(usize, usize)> = corpus
        .pieces
        .iter()
        .filter(|p| !p.held_out)
        .map(|p| (p.source.start, p.source.end))
        .collect();
    for p in corpus.pieces.iter().filter(|p| p.held_out) {
        assert!(
            training
                .iter()
                .all(|&(s, e)| e <= p.source.start || s >= p.source.end),
            "held-out bytes {:?} overlap training bytes",
            p.source
        );
    }
    // No training window holds a letter of a held-out document, and validation windows hold
    // nothing else.
    let held_letters = [b'd', b'h'];
    for step in 0..20 {
        let batch = t.train_batch(step, 1, 0, 8, 16);
        assert!(
            batch
                .ids
                .iter()
                .all(|&i| !held_letters.contains(&(i as u8))),
            "step {step}: a training window reads a held-out document"
        );
    }
    let val = t.eval_batch(0, 0, 1, 4, 16);
    assert!(
        val.ids
            .iter()
            .all(|&i| i == u32::from(b'\n') || held_letters.contains(&(i as u8)))
    );
    // Fewer documents than the rule needs is refused, naming the key.
    let few = dir.join("few");
    std::fs::create_dir_all(&few).unwrap();
    std::fs::write(few.join("one.txt"), "x".repeat(100)).unwrap();
    let err = config::resolve(
        "",
        "t",
        &[
            "task.kind=\"bytes\"".into(),
            format!("task.bytes.path={:?}", few.display().to_string()),
        ],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("task.bytes.path")
            && format!("{err:#}").contains("1 documents"),
        "{err:#}"
    );
}
