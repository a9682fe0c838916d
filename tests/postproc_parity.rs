//! Post-processing parity with the original PyTorch code (../shared/parity):
//! `nms.json` (batched_nms on three random cases, two settings) and `decode.json`
//! (decode + soft-NMS + voting + seconds from the stored head outputs of
//! `forward.safetensors`, and the keyframe evaluation path).

use std::path::PathBuf;

use serde_json::Value;
use xca::infer::keyframes::{self, DecodeSetting, Fallback, GridToSeconds, Keyframes};
use xca::infer::{Candidates, DecodeConfig, LevelOutput, NmsConfig, NmsMethod, batched_nms, decode};
use xca::metrics::keyframe::VideoKeyframes;

/// Tolerance: 1e-5 absolute, relative for values above 1 (grid positions reach ~130,
/// where one float32 step is 1.5e-5, and voting's float32 sum order is torch's own).
const TOL: f32 = 1e-5;

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= TOL * b.abs().max(1.0)
}

#[macro_use]
#[path = "common/parity.rs"]
mod parity_fixtures;

fn parity(name: &str) -> PathBuf {
    parity_fixtures::file(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(parity(name)).unwrap()).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn segs(v: &Value) -> Vec<[f32; 2]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let s = f32s(s);
            [s[0], s[1]]
        })
        .collect()
}

fn labels(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as usize)
        .collect()
}

/// Assert `got` equals the fixture's (segs, scores, labels) to TOL, counts exactly.
/// Returns the largest absolute difference seen.
fn assert_same(what: &str, got: &Candidates, segs_w: &[[f32; 2]], scores_w: &[f32], labels_w: &[usize]) -> f32 {
    assert_eq!(got.len(), segs_w.len(), "{what}: count");
    assert_eq!(got.labels, labels_w, "{what}: labels");
    let mut max = 0.0f32;
    for i in 0..got.len() {
        for (k, (&g, &w)) in got.segs[i].iter().zip(&segs_w[i]).enumerate() {
            max = max.max((g - w).abs());
            assert!(close(g, w), "{what}: seg {i}[{k}] {g} vs {w}");
        }
        let d = (got.scores[i] - scores_w[i]).abs();
        max = max.max(d);
        assert!(
            close(got.scores[i], scores_w[i]),
            "{what}: score {i} {} vs {}",
            got.scores[i],
            scores_w[i]
        );
    }
    max
}

fn nms_cfg(s: &Value) -> NmsConfig {
    NmsConfig {
        method: if s["use_soft_nms"].as_bool().unwrap() {
            NmsMethod::Soft
        } else {
            NmsMethod::Hard
        },
        iou_threshold: s["iou_threshold"].as_f64().unwrap() as f32,
        min_score: s["min_score"].as_f64().unwrap() as f32,
        max_seg_num: s["max_seg_num"].as_u64().unwrap() as usize,
        multiclass: s["multiclass"].as_bool().unwrap(),
        sigma: s["sigma"].as_f64().unwrap() as f32,
        voting_thresh: s["voting_thresh"].as_f64().unwrap() as f32,
    }
}

#[test]
fn nms_matches_original_on_all_cases_and_settings() {
    parity_or_skip!();
    let fx = json("nms.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut worst = 0.0f32;
    for case in cases {
        let input = Candidates {
            segs: segs(&case["segs"]),
            scores: f32s(&case["scores"]),
            labels: labels(&case["labels"]),
        };
        assert_eq!(input.len() as u64, case["n"].as_u64().unwrap());
        for setting in ["a_vessel", "b_multiclass"] {
            let cfg = nms_cfg(&fx["settings"][setting]);
            let out = batched_nms(&input, &cfg);
            let want = &case["out"][setting];
            assert_eq!(
                out.len() as u64,
                want["n_out"].as_u64().unwrap(),
                "n={} {setting}",
                input.len()
            );
            let d = assert_same(
                &format!("n={} {setting}", input.len()),
                &out,
                &segs(&want["segs"]),
                &f32s(&want["scores"]),
                &labels(&want["labels"]),
            );
            worst = worst.max(d);
        }
    }
    eprintln!("nms.json: max abs difference {worst:e}");
}

/// The six levels of stored head outputs, as the model would hand them over.
fn stored_levels() -> Vec<LevelOutput> {
    let bytes = std::fs::read(parity("forward.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    (0..6)
        .map(|l| {
            let mask = read(&format!("mask_l{l}"));
            let valid_len = mask.iter().filter(|&&m| m > 0.5).count();
            // the mask is a prefix
            assert!(mask[..valid_len].iter().all(|&m| m == 1.0));
            LevelOutput {
                stride: (1u32 << l) as f32,
                logits: read(&format!("cls_logits_l{l}")),
                offsets: read(&format!("offsets_l{l}")),
                valid_len,
            }
        })
        .collect()
}

fn test_cfg(fx: &Value) -> (DecodeConfig, NmsConfig, GridToSeconds) {
    let t = &fx["test_cfg"];
    let m = &fx["video_meta"];
    assert_eq!(t["nms_method"], "soft");
    let dec = DecodeConfig {
        num_classes: fx["num_classes"].as_u64().unwrap() as usize,
        pre_nms_thresh: t["pre_nms_thresh"].as_f64().unwrap() as f32,
        pre_nms_topk: t["pre_nms_topk"].as_u64().unwrap() as usize,
        duration_thresh: t["duration_thresh"].as_f64().unwrap() as f32,
    };
    let nms = NmsConfig {
        method: NmsMethod::Soft,
        iou_threshold: t["iou_threshold"].as_f64().unwrap() as f32,
        min_score: t["min_score"].as_f64().unwrap() as f32,
        max_seg_num: t["max_seg_num"].as_u64().unwrap() as usize,
        multiclass: t["multiclass_nms"].as_bool().unwrap(),
        sigma: t["nms_sigma"].as_f64().unwrap() as f32,
        voting_thresh: t["voting_thresh"].as_f64().unwrap() as f32,
    };
    let grid = GridToSeconds {
        feat_stride: m["feat_stride"].as_f64().unwrap(),
        num_frames: m["feat_num_frames"].as_f64().unwrap(),
        downsample_rate: 1.0,
        fps: m["fps"].as_f64().unwrap(),
        duration: m["duration"].as_f64(),
    };
    (dec, nms, grid)
}

#[test]
fn decode_nms_and_seconds_match_original() {
    parity_or_skip!();
    let fx = json("decode.json");
    let (dec, nms, grid) = test_cfg(&fx);
    let pre = decode(&stored_levels(), &dec).unwrap();
    let p = &fx["pre_nms"];
    assert_eq!(pre.len() as u64, fx["n_pre_nms"].as_u64().unwrap());
    let d_pre = assert_same(
        "pre-NMS",
        &pre,
        &segs(&p["segments_grid"]),
        &f32s(&p["scores"]),
        &labels(&p["labels"]),
    );

    let mut out = batched_nms(&pre, &nms);
    out.segs = keyframes::grid_to_seconds(&out.segs, &grid);
    assert_eq!(out.len() as u64, fx["n_out"].as_u64().unwrap());
    let d_out = assert_same(
        "final",
        &out,
        &segs(&fx["segments_seconds"]),
        &f32s(&fx["scores"]),
        &labels(&fx["labels"]),
    );

    // the one-call helper gives the same
    let again = xca::infer::postprocess(&stored_levels(), &dec, &nms, &grid).unwrap();
    assert_eq!(again, out);
    eprintln!("decode.json: max abs difference pre-NMS {d_pre:e}, final {d_out:e}");
}

#[test]
fn decode_nms_and_seconds_match_the_safetensors_fixture() {
    parity_or_skip!();
    // The same lists as decode.json, as the original's float32 and int64 tensors (no
    // decimal round trip): xca's output must match them too.
    let (dec, nms, grid) = test_cfg(&json("decode.json"));
    let bytes = std::fs::read(parity("decode.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let labels = |name: &str| -> Vec<usize> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
            .collect()
    };
    let pairs = |v: Vec<f32>| -> Vec<[f32; 2]> { v.chunks_exact(2).map(|p| [p[0], p[1]]).collect() };

    let pre = decode(&stored_levels(), &dec).unwrap();
    assert_eq!(pre.len(), 372);
    assert_same(
        "pre-NMS (safetensors)",
        &pre,
        &pairs(f32s("pre_nms_segments")),
        &f32s("pre_nms_scores"),
        &labels("pre_nms_labels"),
    );
    let out = xca::infer::postprocess(&stored_levels(), &dec, &nms, &grid).unwrap();
    assert_eq!(out.len(), 200);
    assert_same(
        "final (safetensors)",
        &out,
        &pairs(f32s("segments")),
        &f32s("scores"),
        &labels("labels"),
    );
}

#[test]
fn keyframe_evaluation_path_matches_original() {
    parity_or_skip!();
    let fx = json("decode.json");
    let (dec, nms, grid) = test_cfg(&fx);
    let out = xca::infer::postprocess(&stored_levels(), &dec, &nms, &grid).unwrap();
    let ev = &fx["vessel_eval_path"];
    assert_eq!(ev["decodeSetting"], 0);

    // results_end: the first label-0 and label-1 segments of the sorted list
    let re = &ev["results_end"];
    let want = segs(&re["segments"]);
    for (class, w) in want.iter().enumerate() {
        let got = keyframes::top_of_class(&out, class).unwrap();
        assert!(
            close(got[0], w[0]) && close(got[1], w[1]),
            "class {class}: {got:?} vs {w:?}"
        );
    }

    let fps = grid.fps;
    let (pred, fb) = keyframes::keyframes_of(&out, 0, 1, fps, DecodeSetting::ApexMidpoint);
    assert_eq!(fb, Fallback::None);
    let t: Vec<i64> = ev["t1_t6"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(
        pred,
        Keyframes {
            start: t[0],
            apex: t[1],
            end: t[2]
        }
    );

    // The original's ground truth t4..t6 (grid·4, SPEC §7.2's "bias"), scored as we score.
    let truth = Keyframes {
        start: t[3],
        apex: t[4],
        end: t[5],
    };
    let n_frames = (grid.duration.unwrap() * fps).floor() as usize;
    assert_eq!(n_frames, 400);
    let v = VideoKeyframes {
        truth,
        pred,
        n_frames,
        fallback: fb,
    };
    let dev = v.deviations().iter().sum::<f64>() / 3.0;
    assert!((dev - ev["deviation_div3"].as_f64().unwrap()).abs() < 1e-12);
    let s = v.frame_scores();
    for (got, key) in [
        (s.precision, "P_macro"),
        (s.recall, "R_macro"),
        (s.f1, "F_macro"),
        (s.accuracy, "P_micro"),
        (s.accuracy, "R_micro"),
        (s.accuracy, "F_micro"),
    ] {
        let want = ev[key].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "{key}: {got} vs {want}");
    }
}
