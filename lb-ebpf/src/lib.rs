//! Empty on purpose: a library target lets `lb-userspace` list this crate as a
//! build-dependency, so cargo rebuilds the XDP object when these sources change.
#![no_std]
