//! Shared by the checkpoint targets: the tiny network of fuzz/model.yaml.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor};
use xca::config::Config;
use xca::model::Network;

thread_local! {
    static NETWORK: Network = {
        let yaml = format!(
            "dataset: {{input_dim: 256, max_seq_len: 32}}\n{}",
            include_str!("../model.yaml")
        );
        let cfg = Config::from_yaml_str(&yaml, Path::new("model.yaml")).expect("fuzz/model.yaml").config;
        let device = xca::device::DeviceChoice::Cpu.device().expect("the CPU device");
        xca::config::adapt::network_config(&cfg).init(&device).expect("the tiny network")
    };
}

/// A fresh copy of the tiny network (built once per thread).
pub fn network() -> Network {
    NETWORK.with(Network::clone)
}

struct NotFloat32(Vec<DType>);

impl ModuleVisitor for NotFloat32 {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let dtype = param.val().dtype();
        if dtype != DType::F32 {
            self.0.push(dtype);
        }
    }
}

/// Every float parameter of `net` is float32.
pub fn assert_float32(net: &Network) {
    let mut v = NotFloat32(Vec::new());
    net.visit(&mut v);
    assert!(v.0.is_empty(), "weights of other dtypes after a load: {:?}", v.0);
}
