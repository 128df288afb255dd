//! Tells the crate which Python it is built for (`Py_3_10` and so on), for the one
//! type slot that exists only from Python 3.10 (`ready.rs`).

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
