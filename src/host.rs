//! Every read of a tensor's values back to the host goes through here, so that `xca bench`
//! can count them: on a GPU each read is a device → host synchronisation that stalls the
//! queue, and issue #16 asks for none inside a training step.
//!
//! burn and CubeCL have no hook on reads (CubeCL's `LaunchObserver` sees launches only), so
//! the count is of xca's own reads; burn's internal ones (none on the operations xca uses in a
//! step) are not seen. `clippy.toml` forbids `Tensor::into_data`/`to_data`/`into_scalar`
//! outside this module (and tests), which keeps the count complete.

use std::cell::Cell;

use burn::tensor::kind::Basic;
use burn::tensor::{Tensor, TensorData};

thread_local! {
    /// Reads issued from this thread (a step runs on one thread; tests run in parallel).
    static READS: Cell<usize> = const { Cell::new(0) };
}

/// The values of `t` on the host: one read.
///
/// # Errors
/// The back-end's read error, as text (a lost device, an out-of-memory).
pub fn read<const D: usize, K: Basic>(t: Tensor<D, K>) -> Result<TensorData, String> {
    READS.with(|r| r.set(r.get() + 1));
    #[allow(clippy::disallowed_methods)] // the one sanctioned read
    t.try_into_data().map_err(|e| format!("{e:?}"))
}

/// The first value of `t` as `f64` (NaN for an empty tensor): one read.
///
/// # Errors
/// As [`read`].
pub fn read_scalar<const D: usize, K: Basic>(t: Tensor<D, K>) -> Result<f64, String> {
    Ok(read(t)?.iter::<f64>().next().unwrap_or(f64::NAN))
}

/// The reads issued from this thread so far; the difference of two calls counts the reads
/// of the work between them.
pub fn reads() -> usize {
    READS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Int};

    #[test]
    fn each_read_is_counted_on_its_thread() {
        let dev = Device::flex();
        let before = reads();
        let t = Tensor::<2>::from_floats([[1.5, 2.0], [3.0, 4.0]], &dev);
        let v = read(t.clone()).unwrap().try_to_vec::<f32>().unwrap();
        assert_eq!(v, [1.5, 2.0, 3.0, 4.0]);
        assert_eq!(read_scalar(t.sum()).unwrap(), 10.5);
        assert_eq!(read_scalar(Tensor::<1, Int>::arange(3..5, &dev)).unwrap(), 3.0);
        assert_eq!(reads() - before, 3);
        // Another thread's reads are its own.
        std::thread::spawn(move || read(Tensor::<1>::zeros([2], &dev)).map(|_| reads()))
            .join()
            .map_or_else(|_| panic!("thread"), |n| assert_eq!(n.unwrap(), 1));
        assert_eq!(reads() - before, 3);
        // Computing without reading reads nothing.
        let _ = Tensor::<1>::ones([4], &Device::flex()).exp().sum();
        assert_eq!(reads() - before, 3);
    }
}
