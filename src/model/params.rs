//! Parameter counts per block of the SPEC §3 network (for `xca config --params`). BatchNorm running statistics are
//! buffers, not parameters, and are not counted.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use super::Network;

struct Counter {
    path: Vec<String>,
    counts: Vec<(String, usize)>,
}

/// The block a parameter path belongs to.
fn block_of(path: &[String]) -> String {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["backbone", "long_term", part, ..] => format!("long_term.{part}"),
        ["backbone", "embd" | "embd_norm", ..] => "embedding".into(),
        ["backbone", "stem", ..] => "stem".into(),
        ["backbone", "branch", ..] => "branch".into(),
        [first, ..] => (*first).to_string(),
        [] => "other".into(),
    }
}

impl ModuleVisitor for Counter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let leaf = self.path.last().map(String::as_str).unwrap_or("");
        if leaf == "running_mean" || leaf == "running_var" {
            return;
        }
        let n = param.lazy_shape().num_elements();
        let block = block_of(&self.path);
        match self.counts.iter_mut().find(|(b, _)| *b == block) {
            Some((_, c)) => *c += n,
            None => self.counts.push((block, n)),
        }
    }
}

/// Trainable parameters per block, in module order: `long_term.convlstm`,
/// `long_term.spatial`, `long_term.projection`, `embedding`, `stem`, `branch`, `neck`,
/// `cls_head`, `reg_head` (blocks that do not exist are absent). The total is their sum.
pub fn param_counts(network: &Network) -> Vec<(String, usize)> {
    let mut c = Counter {
        path: Vec::new(),
        counts: Vec::new(),
    };
    network.visit(&mut c);
    c.counts
}
