//! A reader that turns fuzz bytes into values. It never fails: once the input is exhausted
//! every read yields zero or an empty slice, so every input is a valid test case and a
//! minimised input stays meaningful.

/// Consumes fuzz input from the front.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// Whether any input is left.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let n = N.min(self.buf.len());
        a[..n].copy_from_slice(&self.buf[..n]);
        self.buf = &self.buf[n..];
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }

    /// A byte string of at most `max` bytes (its length is read first, then the bytes).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let want = usize::from(self.u16()) % (max + 1);
        let n = want.min(self.buf.len());
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        head
    }

    /// A timestamp: usually near a fixed epoch (so batches compare meaningfully), sometimes
    /// any `i64` including the extremes.
    pub fn timestamp(&mut self) -> i64 {
        match self.u8() % 4 {
            0 => self.i64(),
            1 => [i64::MIN, i64::MAX, 0, -1][usize::from(self.u8() % 4)],
            _ => 1_700_000_000_000 + i64::from(self.u16() as i16),
        }
    }
}
