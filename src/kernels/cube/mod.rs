//! The GPU kernels: CubeCL kernels on `f32` tensors of burn's `CubeBackend` (no autodiff,
//! no dispatch types), as [`super::cpu`] holds the CPU ones. The burn glue that routes
//! tensors here and records the backward is `super::*_cube_op`.

pub mod convlstm;
pub mod gelu;
pub mod layernorm;
pub mod optim;
