//! Source-balanced mini-batches over streamed impression logs.
//!
//! Each source (promotion, ad) is read row group by row group, filtered to the training
//! days, and drawn from through a bounded shuffle buffer; when a file is exhausted it is
//! reopened, so the smaller source cycles while the larger one streams. Memory is bounded
//! by the buffers, not by the size of the logs.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::logs::{self, Impression, ImpressionReader};

pub struct SourceStream {
    path: PathBuf,
    days: Range<u32>,
    reader: Option<ImpressionReader>,
    /// Rows waiting to be drawn, each with the pass over the file it was read in.
    buffer: Vec<(u32, Impression)>,
    capacity: usize,
    /// Rows delivered in the current pass, to detect a pass that yields nothing.
    rows_this_pass: u64,
    /// Per pass begun: rows read into the buffer, rows drawn from it, and whether the
    /// file's end was reached.
    passes: Vec<PassCount>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PassCount {
    read: u64,
    drawn: u64,
    finished: bool,
}

impl SourceStream {
    pub fn new(path: PathBuf, days: Range<u32>, capacity: usize) -> SourceStream {
        SourceStream {
            path,
            days,
            reader: None,
            buffer: Vec::with_capacity(capacity),
            capacity: capacity.max(1),
            rows_this_pass: 0,
            passes: Vec::new(),
        }
    }

    /// Passes over the file whose every row has been drawn: once this is 1, every
    /// training row of the source has been in a batch.
    pub fn full_passes(&self) -> usize {
        self.passes
            .iter()
            .take_while(|pass| pass.finished && pass.drawn == pass.read)
            .count()
    }

    fn refill(&mut self) -> Result<()> {
        let mut reopened = false;
        while self.buffer.len() < self.capacity {
            if self.reader.is_none() {
                // The file's end was reached and rows of that pass still wait: the next
                // pass begins only once they are drawn. Mixing the next pass's rows in
                // would leave the last of them to a coupon collector's tail (about
                // another pass of draws), delaying the first full pass.
                if self.passes.last().is_some_and(|pass| pass.finished) && !self.buffer.is_empty() {
                    break;
                }
                if reopened && self.rows_this_pass == 0 {
                    anyhow::bail!(
                        "{}: no rows in training days {:?}",
                        self.path.display(),
                        self.days
                    );
                }
                self.reader = Some(
                    logs::open_impressions(&self.path)
                        .with_context(|| format!("opening {}", self.path.display()))?,
                );
                self.rows_this_pass = 0;
                self.passes.push(PassCount::default());
                reopened = true;
            }
            let pass = self.passes.len() - 1;
            let reader = self.reader.as_mut().expect("opened above");
            match reader.next() {
                Some(group) => {
                    let group =
                        group.with_context(|| format!("reading {}", self.path.display()))?;
                    let before = self.buffer.len();
                    self.buffer.extend(
                        group
                            .into_iter()
                            .filter(|row| self.days.contains(&row.day))
                            .map(|row| (pass as u32, row)),
                    );
                    let added = (self.buffer.len() - before) as u64;
                    self.rows_this_pass += added;
                    self.passes[pass].read += added;
                }
                None => {
                    self.reader = None;
                    self.passes[pass].finished = true;
                }
            }
        }
        Ok(())
    }

    pub fn draw(&mut self, rng: &mut ChaCha8Rng) -> Result<Impression> {
        if self.buffer.len() < self.capacity / 2 || self.buffer.is_empty() {
            self.refill()?;
        }
        let index = rng.random_range(0..self.buffer.len());
        let (pass, row) = self.buffer.swap_remove(index);
        self.passes[pass as usize].drawn += 1;
        Ok(row)
    }
}

/// Draws `promotion_share` of each batch from the promotion stream and the rest from the
/// ad stream; a variant trained on one source has only that stream.
pub struct BalancedSampler {
    pub promotions: Option<SourceStream>,
    pub ads: Option<SourceStream>,
    pub promotion_share: f64,
    pub batch_size: usize,
    rng: ChaCha8Rng,
}

impl BalancedSampler {
    pub fn new(
        promotions: Option<SourceStream>,
        ads: Option<SourceStream>,
        promotion_share: f64,
        batch_size: usize,
        rng: ChaCha8Rng,
    ) -> BalancedSampler {
        BalancedSampler {
            promotions,
            ads,
            promotion_share,
            batch_size,
            rng,
        }
    }

    /// Full passes over each source used (`None` for a source the variant does not read).
    pub fn full_passes(&self) -> (Option<usize>, Option<usize>) {
        (
            self.promotions.as_ref().map(SourceStream::full_passes),
            self.ads.as_ref().map(SourceStream::full_passes),
        )
    }

    pub fn next_batch(&mut self) -> Result<Vec<Impression>> {
        let from_promotions = match (&self.promotions, &self.ads) {
            (Some(_), Some(_)) => (self.promotion_share * self.batch_size as f64).round() as usize,
            (Some(_), None) => self.batch_size,
            _ => 0,
        };
        let mut batch = Vec::with_capacity(self.batch_size);
        if let Some(stream) = self.promotions.as_mut() {
            for _ in 0..from_promotions {
                batch.push(stream.draw(&mut self.rng)?);
            }
        }
        if let Some(stream) = self.ads.as_mut() {
            for _ in from_promotions..self.batch_size {
                batch.push(stream.draw(&mut self.rng)?);
            }
        }
        Ok(batch)
    }
}
