//! A minimal MaxMind DB writer (IPv4 tree, 24-bit records), so that tests can
//! build country databases in any layout they need.

use std::net::Ipv4Addr;

/// A value in the data section.
pub enum V {
    Str(&'static str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, V)>),
    Arr(Vec<V>),
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes: Vec<u8> = v
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if ty <= 7 {
        out.push((ty << 5) | bytes.len() as u8);
    } else {
        out.push(bytes.len() as u8);
        out.push(ty - 7);
    }
    out.extend(bytes);
}

fn encode(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Str(s) => {
            assert!(s.len() < 29);
            out.push((2 << 5) | s.len() as u8);
            out.extend(s.as_bytes());
        }
        V::U16(n) => uint(out, 5, u64::from(*n)),
        V::U32(n) => uint(out, 6, u64::from(*n)),
        V::U64(n) => uint(out, 9, *n),
        V::Map(m) => {
            out.push((7 << 5) | m.len() as u8);
            for (k, v) in m {
                encode(&V::Str(k), out);
                encode(v, out);
            }
        }
        V::Arr(a) => {
            out.push(a.len() as u8);
            out.push(11 - 7);
            for v in a {
                encode(v, out);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// A database mapping each IPv4 network to its record. Networks must not overlap.
pub fn ipv4_database(entries: Vec<(Ipv4Addr, u8, V)>) -> Vec<u8> {
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty; 2]];
    let mut data = Vec::new();
    for (ip, prefix, value) in &entries {
        let offset = data.len();
        encode(value, &mut data);
        let bits = u32::from(*ip);
        let mut node = 0;
        for i in 0..*prefix {
            let bit = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == *prefix {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(n) => n,
                    _ => {
                        nodes.push([Rec::Empty; 2]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n);
                        n
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => count,
                Rec::Node(i) => i,
                Rec::Data(off) => count + 16 + off,
            };
            out.extend(&(v as u32).to_be_bytes()[1..]);
        }
    }
    out.extend([0u8; 16]);
    out.extend(&data);
    out.extend(b"\xAB\xCD\xEFMaxMind.com");
    encode(
        &V::Map(vec![
            ("binary_format_major_version", V::U16(2)),
            ("binary_format_minor_version", V::U16(0)),
            ("build_epoch", V::U64(1_700_000_000)),
            ("database_type", V::Str("Test-Country")),
            ("description", V::Map(vec![("en", V::Str("test fixture"))])),
            ("ip_version", V::U16(4)),
            ("languages", V::Arr(vec![V::Str("en")])),
            ("node_count", V::U32(count as u32)),
            ("record_size", V::U16(24)),
        ]),
        &mut out,
    );
    out
}

/// The flat layout: `country_code` at the top level.
pub fn flat_fixture() -> Vec<u8> {
    ipv4_database(vec![
        (
            Ipv4Addr::new(81, 2, 69, 0),
            24,
            V::Map(vec![("country_code", V::Str("NL"))]),
        ),
        (
            Ipv4Addr::new(5, 5, 5, 0),
            24,
            V::Map(vec![("country_code", V::Str("BR"))]),
        ),
    ])
}

/// MaxMind's layout with only `registered_country` known for one network.
pub fn registered_only_fixture() -> Vec<u8> {
    ipv4_database(vec![(
        Ipv4Addr::new(6, 6, 6, 0),
        24,
        V::Map(vec![(
            "registered_country",
            V::Map(vec![("iso_code", V::Str("FR"))]),
        )]),
    )])
}
