//! Reads the server name (SNI) out of a TLS ClientHello, so the proxy can
//! require it to equal the CONNECT host: a tunnel opened for an allowed
//! name cannot be used to talk TLS to another virtual host behind it.

/// The first TLS record must fit here (a ClientHello is far smaller).
pub const MAX_RECORD: usize = 16 * 1024 + 5;

/// How many bytes the first record needs in all, once its header is read.
pub fn record_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 5 || buf[0] != 22 {
        return None;
    }
    Some(5 + u16::from_be_bytes([buf[3], buf[4]]) as usize)
}

/// The host_name of the ClientHello in `record` (a whole first record).
pub fn server_name(record: &[u8]) -> Option<String> {
    let mut r = Reader(record.get(5..)?);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut hello = Reader(r.take(len)?);
    hello.take(2 + 32)?; // version, random
    let sid = hello.u8()? as usize;
    hello.take(sid)?;
    let suites = hello.u16()? as usize;
    hello.take(suites)?;
    let comp = hello.u8()? as usize;
    hello.take(comp)?;
    let ext_len = hello.u16()? as usize;
    let mut exts = Reader(hello.take(ext_len)?);
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let body = exts.take(len as usize)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(body);
        let list_len = list.u16()? as usize;
        let mut names = Reader(list.take(list_len)?);
        while let Some(name_type) = names.u8() {
            let n = names.u16()? as usize;
            let name = names.take(n)?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(str::to_owned);
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello carrying one server name.
    fn hello(name: &str) -> Vec<u8> {
        let n = name.as_bytes();
        let mut sni = Vec::new();
        sni.extend(((n.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend((n.len() as u16).to_be_bytes());
        sni.extend(n);
        let mut exts = Vec::new();
        exts.extend(0u16.to_be_bytes());
        exts.extend((sni.len() as u16).to_be_bytes());
        exts.extend(sni);
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.push(0); // session id
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]);
        body.extend([1, 0]); // compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        let rec = hello("api.example.com");
        assert_eq!(record_len(&rec), Some(rec.len()));
        assert_eq!(server_name(&rec).as_deref(), Some("api.example.com"));
        assert_eq!(server_name(&rec[..rec.len() - 3]), None);
        assert_eq!(record_len(b"GET / HTTP/1.1\r\n"), None);
    }
}
