//! `test-backend NAME BIND [UDP_BIND...]`: the tests' HTTP backend as a process of its own,
//! printing the address it bound, serving until killed. Each UDP_BIND is a UDP socket that
//! answers every datagram with `backend NAME ` followed by the datagram.
fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let backend = edgelb_tests::backend::Backend::start(&name, &bind, None);
    for udp in args {
        edgelb_tests::backend::udp_echo(&name, &udp);
    }
    println!("{}", backend.addr);
    loop {
        std::thread::park();
    }
}
