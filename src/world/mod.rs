//! The synthetic world: users with latent tastes, a long-tailed catalog of shows with
//! brand-new ones among them, promotion and ad campaigns, and impressions whose outcomes
//! follow a shared user-show affinity plus channel- and context-specific offsets.
//! `podscore simulate` writes it through [`crate::logs`], in the layout documented there
//! and in the README's "The synthetic world".
//!
//! The same seed and settings give byte-identical files: all randomness comes from
//! ChaCha8 streams derived from the seed per purpose and per fixed-size chunk (never per
//! thread), nothing iterates a hash map into the output, and no file records the time it
//! was written.
//!
//! This module knows how the world is simulated. It does not know Parquet (that is
//! `logs`), features, tensors or models; the trainer must not peek at its latent
//! variables, only at the files.

mod ad_taste;
mod catalog;
pub mod objectives;
mod oracle;
mod outcomes;
mod traffic;

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::entities::CandidateKind;
use crate::logs::{
    self, EPISODES_FILE, ImpressionWriter, LOGS_DIR, LogError, ROWS_PER_ROW_GROUP, SHOWS_FILE,
    SNAPSHOT_DIR, USERS_FILE, WORLD_FORMAT_VERSION, WorldInfo, WorldSettings, WorldSummary,
};

pub use catalog::{HISTORY_MAX, TASTE_DIM, TIER_CUMULATIVE_SHARE};
pub use oracle::{Oracle, OracleError};

/// Seed used when none is given: any fixed value makes `simulate` reproducible by default.
pub const DEFAULT_SEED: u64 = 42;
/// Day 0 of every world unless overridden: a fixed date, so that files never depend on
/// when they were written. (It sits after the paper's experiments, in no real data.)
pub const DEFAULT_START: &str = "2026-09-01T00:00:00Z";
/// Share of all impressions that are ads. Ads are the scarce source in the paper: a
/// fifth of the volume keeps them clearly the minority while leaving enough ad rows in
/// the small preset to measure ad AP.
pub const DEFAULT_AD_SHARE: f64 = 0.2;
/// Share of shows created during the window (the cold-start set). A few percent, as on
/// a real platform in a month, but enough for a tier analysis in the small preset.
pub const DEFAULT_NEW_SHOW_SHARE: f64 = 0.06;
/// The ad affinity is the promotion affinity itself: today's world, where ads carry no
/// taste of their own. Lower values mix in an ad-specific part (see `ad_taste`).
pub const DEFAULT_AD_AFFINITY_CORRELATION: f64 = 1.0;
/// No ad-only structure beyond the small slot, format, creative and campaign offsets
/// every world has; 1.0 is the strength the pre-registered grid uses.
pub const DEFAULT_AD_STRUCTURE: f64 = 0.0;
/// Standard deviation of the noise a content embedding adds to the projected latent:
/// 0.3 reveals the latent almost exactly (an encoder trained on the catalog itself);
/// larger values make brand-new shows as cold as a real content encoder leaves them.
pub const DEFAULT_CONTENT_EMBEDDING_NOISE: f64 = 0.3;
/// Beyond this the embedding is noise whatever the latent: nothing colder is useful.
const MAX_CONTENT_EMBEDDING_NOISE: f64 = 10.0;
/// Ad-only effects several times today's: enough to dominate the ad logit's own part.
const MAX_AD_STRUCTURE: f64 = 4.0;
/// Brand-new shows go live in the last quarter of the window, so that with a time split
/// they appear in validation and test days but little or not at all in training.
const BRAND_NEW_FROM_FRACTION: f64 = 0.75;
/// The largest impression count accepted: the compact rows take about 100 bytes each in
/// memory, so this bounds the simulator at a few GB.
const MAX_IMPRESSIONS: usize = 30_000_000;
const MAX_USERS: usize = 10_000_000;
const MAX_SHOWS: usize = 1_000_000;
const MAX_DAYS: u32 = 3_650;
/// Fewer shows cannot fill eight tiers and a set of campaigns.
const MIN_SHOWS: usize = 20;
/// Labelled impressions per new objective, pool or test: a few times the 100k a learning
/// curve needs, small enough that an objective file stays under a hundred MB.
const MAX_OBJECTIVE_LABELS: usize = 1_000_000;

/// Named world sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// About 2k users, 300 shows, 60k impressions, 14 days: seconds, for tests.
    Small,
    /// About 100k users, 10k shows, 3M impressions, 28 days: the reproduction world.
    #[value(name = "default")]
    Standard,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Small => "small",
            Preset::Standard => "default",
        }
    }

    /// (users, shows, days, impressions).
    fn sizes(self) -> (usize, usize, u32, usize) {
        match self {
            Preset::Small => (2_000, 300, 14, 60_000),
            Preset::Standard => (100_000, 10_000, 28, 3_000_000),
        }
    }
}

/// `podscore simulate`: every flag can also come from the environment variable named.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Folder to create for the world; it must not exist yet, or be empty.
    #[arg(long, env = "PODSCORE_SIMULATE_OUT")]
    pub out: PathBuf,
    /// Seed of every random draw: the same seed gives byte-identical files.
    #[arg(long, env = "PODSCORE_SIMULATE_SEED", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// World size to start from; the flags below override single values.
    #[arg(long, env = "PODSCORE_SIMULATE_PRESET", value_enum, default_value_t = Preset::Standard)]
    pub preset: Preset,
    /// Number of users.
    #[arg(long, env = "PODSCORE_SIMULATE_USERS")]
    pub users: Option<usize>,
    /// Number of shows, brand-new ones included.
    #[arg(long, env = "PODSCORE_SIMULATE_SHOWS")]
    pub shows: Option<usize>,
    /// Days of impressions.
    #[arg(long, env = "PODSCORE_SIMULATE_DAYS")]
    pub days: Option<u32>,
    /// Impressions of both kinds together.
    #[arg(long, env = "PODSCORE_SIMULATE_IMPRESSIONS")]
    pub impressions: Option<usize>,
    /// Share of impressions that are ads, strictly between 0 and 1.
    #[arg(long, env = "PODSCORE_SIMULATE_AD_SHARE")]
    pub ad_share: Option<f64>,
    /// Share of shows created during the window (brand-new), from 0 to 0.5.
    #[arg(long, env = "PODSCORE_SIMULATE_NEW_SHOW_SHARE")]
    pub new_show_share: Option<f64>,
    /// Day 0 of the world, RFC 3339.
    #[arg(long, env = "PODSCORE_SIMULATE_START", default_value = DEFAULT_START)]
    pub start: String,
    /// Correlation of the ad affinity with the promotion affinity, 0 to 1: below 1, ad
    /// outcomes follow partly an ad-specific taste of each user (receptivity partly
    /// visible through profile and hour, ad taste partly through profile and content).
    #[arg(long, env = "PODSCORE_SIMULATE_AD_AFFINITY_CORRELATION")]
    pub ad_affinity_correlation: Option<f64>,
    /// Strength of the ad-only structure features can see, 0 to 4: host genre against
    /// advertised genre, slot against session length, format against platform, and
    /// larger creative and campaign effects.
    #[arg(long, env = "PODSCORE_SIMULATE_AD_STRUCTURE")]
    pub ad_structure: Option<f64>,
    /// Noise of the content embedding around the projected show latent, 0 to 10.
    #[arg(long, env = "PODSCORE_SIMULATE_CONTENT_EMBEDDING_NOISE")]
    pub content_embedding_noise: Option<f64>,
    /// Labelled impressions of each new ad objective (`video_follow`, `episode_complete`)
    /// on the week after the window, the pool `podscore finetune` draws from; 0 writes no
    /// objectives.
    #[arg(long, env = "PODSCORE_SIMULATE_OBJECTIVE_LABELS", default_value_t = 0)]
    pub objective_labels: usize,
    /// Test impressions of each new objective, on the week after the pool's; default half
    /// of `--objective-labels`.
    #[arg(long, env = "PODSCORE_SIMULATE_OBJECTIVE_TEST_LABELS")]
    pub objective_test_labels: Option<usize>,
}

impl SimulateArgs {
    /// The arguments of `podscore simulate --out OUT --preset PRESET --seed SEED`, for
    /// callers (such as `reproduce`) that simulate without a command line.
    pub fn new(out: PathBuf, preset: Preset, seed: u64) -> SimulateArgs {
        SimulateArgs {
            out,
            seed,
            preset,
            users: None,
            shows: None,
            days: None,
            impressions: None,
            ad_share: None,
            new_show_share: None,
            start: DEFAULT_START.to_string(),
            ad_affinity_correlation: None,
            ad_structure: None,
            content_embedding_noise: None,
            objective_labels: 0,
            objective_test_labels: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// Every bad setting, not just the first.
    #[error("invalid settings: {}", .0.join("; "))]
    InvalidSettings(Vec<String>),
    #[error("output folder {} is not empty; choose a new folder or empty it", .0.display())]
    OutputNotEmpty(PathBuf),
    #[error("output path {} exists and is not a folder", .0.display())]
    OutputNotFolder(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    /// A broken invariant of the simulator itself (a bug, not bad input).
    #[error("simulator bug: {0}")]
    Internal(String),
}

/// Validated settings of one world.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    pub seed: u64,
    pub preset: Preset,
    pub users: usize,
    pub shows: usize,
    pub days: u32,
    pub impressions: usize,
    pub ad_share: f64,
    pub new_show_share: f64,
    pub start_timestamp: i64,
    pub ad_affinity_correlation: f64,
    pub ad_structure: f64,
    pub content_embedding_noise: f64,
    /// Labelled pool and test impressions per new objective (0: no objectives).
    pub objective_labels: usize,
    pub objective_test_labels: usize,
}

impl WorldConfig {
    /// The preset's settings with the default seed and start.
    pub fn preset(preset: Preset) -> WorldConfig {
        let (users, shows, days, impressions) = preset.sizes();
        WorldConfig {
            seed: DEFAULT_SEED,
            preset,
            users,
            shows,
            days,
            impressions,
            ad_share: DEFAULT_AD_SHARE,
            new_show_share: DEFAULT_NEW_SHOW_SHARE,
            start_timestamp: default_start_timestamp(),
            ad_affinity_correlation: DEFAULT_AD_AFFINITY_CORRELATION,
            ad_structure: DEFAULT_AD_STRUCTURE,
            content_embedding_noise: DEFAULT_CONTENT_EMBEDDING_NOISE,
            objective_labels: 0,
            objective_test_labels: 0,
        }
    }

    /// Resolves the preset and overrides, and reports every invalid value at once.
    pub fn from_args(args: &SimulateArgs) -> Result<WorldConfig, WorldError> {
        let mut problems = Vec::new();
        let start_timestamp = match chrono::DateTime::parse_from_rfc3339(&args.start) {
            Ok(start) => start.timestamp(),
            Err(error) => {
                problems.push(format!(
                    "--start {:?} is not an RFC 3339 time: {error}",
                    args.start
                ));
                0
            }
        };
        let preset = WorldConfig::preset(args.preset);
        let config = WorldConfig {
            seed: args.seed,
            preset: args.preset,
            users: args.users.unwrap_or(preset.users),
            shows: args.shows.unwrap_or(preset.shows),
            days: args.days.unwrap_or(preset.days),
            impressions: args.impressions.unwrap_or(preset.impressions),
            ad_share: args.ad_share.unwrap_or(preset.ad_share),
            new_show_share: args.new_show_share.unwrap_or(preset.new_show_share),
            start_timestamp,
            ad_affinity_correlation: args
                .ad_affinity_correlation
                .unwrap_or(preset.ad_affinity_correlation),
            ad_structure: args.ad_structure.unwrap_or(preset.ad_structure),
            content_embedding_noise: args
                .content_embedding_noise
                .unwrap_or(preset.content_embedding_noise),
            objective_labels: args.objective_labels,
            objective_test_labels: args
                .objective_test_labels
                .unwrap_or(args.objective_labels / 2),
        };
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(WorldError::InvalidSettings(problems))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=MAX_USERS).contains(&self.users) {
            problems.push(format!(
                "--users must be 1 to {MAX_USERS} (got {})",
                self.users
            ));
        }
        if !(MIN_SHOWS..=MAX_SHOWS).contains(&self.shows) {
            problems.push(format!(
                "--shows must be {MIN_SHOWS} to {MAX_SHOWS} (got {})",
                self.shows
            ));
        }
        if !(1..=MAX_DAYS).contains(&self.days) {
            problems.push(format!(
                "--days must be 1 to {MAX_DAYS} (got {})",
                self.days
            ));
        }
        if !(2..=MAX_IMPRESSIONS).contains(&self.impressions) {
            problems.push(format!(
                "--impressions must be 2 to {MAX_IMPRESSIONS} (got {})",
                self.impressions
            ));
        }
        if !(self.ad_share > 0.0 && self.ad_share < 1.0) {
            problems.push(format!(
                "--ad-share must be strictly between 0 and 1 (got {})",
                self.ad_share
            ));
        } else if self.impressions >= 2
            && (self.ad_count() == 0 || self.ad_count() == self.impressions)
        {
            problems.push(format!(
                "--ad-share {} of {} impressions leaves one kind without impressions",
                self.ad_share, self.impressions
            ));
        }
        problems.extend(
            [
                outside("--new-show-share", self.new_show_share, 0.0, 0.5),
                outside(
                    "--ad-affinity-correlation",
                    self.ad_affinity_correlation,
                    0.0,
                    1.0,
                ),
                outside("--ad-structure", self.ad_structure, 0.0, MAX_AD_STRUCTURE),
                outside(
                    "--content-embedding-noise",
                    self.content_embedding_noise,
                    0.0,
                    MAX_CONTENT_EMBEDDING_NOISE,
                ),
            ]
            .into_iter()
            .flatten(),
        );
        if self.objective_labels > MAX_OBJECTIVE_LABELS {
            problems.push(format!(
                "--objective-labels must be 0 to {MAX_OBJECTIVE_LABELS} (got {})",
                self.objective_labels
            ));
        }
        if self.objective_test_labels > MAX_OBJECTIVE_LABELS
            || (self.objective_labels > 0 && self.objective_test_labels == 0)
        {
            problems.push(format!(
                "--objective-test-labels must be 1 to {MAX_OBJECTIVE_LABELS} when objectives are written (got {})",
                self.objective_test_labels
            ));
        }
        problems
    }

    /// Ad impressions: the ad share of all impressions, rounded.
    pub fn ad_count(&self) -> usize {
        ((self.impressions as f64) * self.ad_share).round() as usize
    }

    pub fn brand_new_from_day(&self) -> u32 {
        ((f64::from(self.days) * BRAND_NEW_FROM_FRACTION).floor() as u32)
            .min(self.days.saturating_sub(1))
    }

    /// The settings `world.json` records for this world.
    pub fn settings(&self) -> WorldSettings {
        WorldSettings {
            seed: self.seed,
            preset: self.preset.name().to_string(),
            users: self.users as u64,
            shows: self.shows as u64,
            days: self.days,
            impressions: self.impressions as u64,
            ad_share: self.ad_share,
            new_show_share: self.new_show_share,
            start_timestamp: self.start_timestamp,
            start: chrono::DateTime::from_timestamp(self.start_timestamp, 0)
                .map(|start| start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            ad_affinity_correlation: (self.ad_affinity_correlation
                != DEFAULT_AD_AFFINITY_CORRELATION)
                .then_some(self.ad_affinity_correlation),
            ad_structure: (self.ad_structure != DEFAULT_AD_STRUCTURE).then_some(self.ad_structure),
            content_embedding_noise: (self.content_embedding_noise
                != DEFAULT_CONTENT_EMBEDDING_NOISE)
                .then_some(self.content_embedding_noise),
        }
    }

    /// The settings recorded in a world's `world.json`, to rebuild the same world (the
    /// [`Oracle`] does, to know the true probabilities of impressions never logged).
    pub fn from_settings(settings: &WorldSettings) -> Result<WorldConfig, WorldError> {
        let preset = match settings.preset.as_str() {
            "small" => Preset::Small,
            "default" => Preset::Standard,
            other => {
                return Err(WorldError::InvalidSettings(vec![format!(
                    "world.json names preset {other:?}; this build knows `small` and `default`"
                )]));
            }
        };
        let count = |value: u64, name: &str| {
            usize::try_from(value)
                .map_err(|_| WorldError::InvalidSettings(vec![format!("{name} {value} too large")]))
        };
        let config = WorldConfig {
            seed: settings.seed,
            preset,
            users: count(settings.users, "users")?,
            shows: count(settings.shows, "shows")?,
            days: settings.days,
            impressions: count(settings.impressions, "impressions")?,
            ad_share: settings.ad_share,
            new_show_share: settings.new_show_share,
            start_timestamp: settings.start_timestamp,
            ad_affinity_correlation: settings
                .ad_affinity_correlation
                .unwrap_or(DEFAULT_AD_AFFINITY_CORRELATION),
            ad_structure: settings.ad_structure.unwrap_or(DEFAULT_AD_STRUCTURE),
            content_embedding_noise: settings
                .content_embedding_noise
                .unwrap_or(DEFAULT_CONTENT_EMBEDDING_NOISE),
            // The objectives' files are not part of world.json (objectives.json describes
            // them); a rebuilt world answers for the window's impressions only.
            objective_labels: 0,
            objective_test_labels: 0,
        };
        match config.problems().as_slice() {
            [] => Ok(config),
            problems => Err(WorldError::InvalidSettings(problems.to_vec())),
        }
    }
}

/// `FLAG must be LOW to HIGH (got VALUE)` when `value` is outside the closed range (NaN
/// included).
fn outside(flag: &str, value: f64, low: f64, high: f64) -> Option<String> {
    (!(low..=high).contains(&value))
        .then(|| format!("{flag} must be {low} to {high} (got {value})"))
}

fn default_start_timestamp() -> i64 {
    chrono::DateTime::parse_from_rfc3339(DEFAULT_START).map_or(0, |start| start.timestamp())
}

/// Purposes of the random streams. Each purpose (and each chunk within one) draws from
/// its own ChaCha8 stream, so that changing how users are drawn, say, leaves the shows
/// of a seed as they were.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Latents = 1,
    Shows = 2,
    Users = 3,
    Campaigns = 4,
    Impressions = 5,
    /// The ad-specific taste (`ad_taste`): drawn in streams of its own, so that worlds
    /// with the default knobs consume exactly the numbers they always did.
    AdLatents = 6,
    AdUsers = 7,
    /// The show an ad plays in, drawn per (user, second) so that it can be drawn again.
    Hosts = 8,
    /// Counterfactual ad candidates of the [`Oracle`].
    Counterfactuals = 9,
    /// The new objectives' impressions ([`objectives`]), well clear of the others.
    Objectives = 16,
}

pub(crate) fn stream_rng(seed: u64, purpose: Stream, chunk: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((purpose as u64) << 40) | chunk);
    rng
}

/// A stream for one keyed draw (a user at a second, an opportunity): the key's low 56
/// bits pick the stream, above every chunk of [`stream_rng`] (chunks stay below 2^40).
pub(crate) fn keyed_rng(seed: u64, purpose: Stream, key: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((purpose as u64) << 56) | (key & ((1 << 56) - 1)));
    rng
}

/// `podscore simulate`.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let config = WorldConfig::from_args(args).context("checking simulate settings")?;
    let info = simulate(&config, &args.out)
        .with_context(|| format!("simulating into {}", args.out.display()))?;
    let summary = &info.summary;
    eprintln!(
        "wrote {}: {} promotion and {} ad impressions, {} users, {} shows ({} brand-new)",
        args.out.display(),
        summary
            .channels
            .get("promotion")
            .map_or(0, |channel| channel.impressions),
        summary
            .channels
            .get("ad")
            .map_or(0, |channel| channel.impressions),
        config.users,
        config.shows,
        summary.brand_new_shows,
    );
    Ok(())
}

/// A folder beside the destination that the world is written into, renamed into place
/// when complete and removed if anything fails, so that no half-written world remains.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(out: &Path) -> Result<Staging, WorldError> {
        match std::fs::metadata(out) {
            Ok(metadata) if !metadata.is_dir() => {
                return Err(WorldError::OutputNotFolder(out.to_path_buf()));
            }
            Ok(_) => {
                let mut entries = std::fs::read_dir(out).map_err(|source| WorldError::Io {
                    path: out.to_path_buf(),
                    source,
                })?;
                if entries.next().is_some() {
                    return Err(WorldError::OutputNotEmpty(out.to_path_buf()));
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WorldError::Io {
                    path: out.to_path_buf(),
                    source,
                });
            }
        }
        let parent = match out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|source| WorldError::Io {
            path: parent.clone(),
            source,
        })?;
        let name = out.file_name().map_or_else(
            || "world".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        let path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        // A leftover of a crashed run of the same process id: ours by its name.
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| WorldError::Io {
                path: path.clone(),
                source,
            })?;
        }
        for folder in [path.clone(), path.join(LOGS_DIR), path.join(SNAPSHOT_DIR)] {
            std::fs::create_dir(&folder).map_err(|source| WorldError::Io {
                path: folder,
                source,
            })?;
        }
        Ok(Staging {
            path,
            committed: false,
        })
    }

    fn commit(mut self, out: &Path) -> Result<(), WorldError> {
        // An empty destination folder was allowed; it makes way for the finished one.
        if out.is_dir() {
            std::fs::remove_dir(out).map_err(|source| WorldError::Io {
                path: out.to_path_buf(),
                source,
            })?;
        }
        std::fs::rename(&self.path, out).map_err(|source| WorldError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that brought us here is the one worth reporting.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn progress_bar(length: u64, message: &'static str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{msg:>22} [{bar:40}] {human_pos}/{human_len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bar = ProgressBar::new(length)
        .with_style(style)
        .with_message(message);
    bar.tick();
    bar
}

/// Simulates `config` into the new folder `out` (which must not exist, or be empty) and
/// returns what it wrote to `world.json`. Progress goes to stderr when it is a terminal.
pub fn simulate(config: &WorldConfig, out: &Path) -> Result<WorldInfo, WorldError> {
    if let problems @ [_, ..] = config.problems().as_slice() {
        return Err(WorldError::InvalidSettings(problems.to_vec()));
    }
    let staging = Staging::create(out)?;

    let users_bar = progress_bar(config.users as u64, "drawing users");
    let catalog = catalog::Catalog::build(config, &|count| users_bar.inc(count))?;
    users_bar.finish_and_clear();

    let traffic_bar = progress_bar(config.impressions as u64, "drawing impressions");
    let rows = traffic::generate(config, &catalog, &|count| traffic_bar.inc(count))?;
    traffic_bar.finish_and_clear();

    let (channels, tiers) = traffic::summarize(&catalog, &rows);
    let writing_bar = progress_bar(config.impressions as u64, "writing impressions");
    // The ad's host genre is logged where it acts: in worlds with ad structure. Without
    // it the files are what they were before the knob existed.
    let host_genre = config.ad_structure != DEFAULT_AD_STRUCTURE;
    let (promotions, ads) = rayon::join(
        || {
            write_channel(
                &staging.path,
                &rows,
                CandidateKind::Promotion,
                false,
                &writing_bar,
            )
        },
        || {
            write_channel(
                &staging.path,
                &rows,
                CandidateKind::Ad,
                host_genre,
                &writing_bar,
            )
        },
    );
    let (promotion_rows, ad_rows) = (promotions?, ads?);
    drop(rows);
    writing_bar.finish_and_clear();

    let snapshot = staging.path.join(SNAPSHOT_DIR);
    let users = catalog.user_records();
    let shows = catalog.show_records();
    let episodes = catalog.episode_records();
    // The snapshot is the catalog as it stands when the simulated days end.
    let as_of = config.start_timestamp + i64::from(config.days) * traffic::SECONDS_PER_DAY;
    logs::write_users(&snapshot.join(USERS_FILE), &users, as_of)?;
    logs::write_shows(&snapshot.join(SHOWS_FILE), &shows, as_of)?;
    logs::write_episodes(&snapshot.join(EPISODES_FILE), &episodes, as_of)?;

    let relative = |kind| {
        logs::impressions_path(Path::new(""), kind)
            .to_string_lossy()
            .replace('\\', "/")
    };
    let rows_per_file = [
        (relative(CandidateKind::Promotion), promotion_rows),
        (relative(CandidateKind::Ad), ad_rows),
        (format!("{SNAPSHOT_DIR}/{USERS_FILE}"), users.len() as u64),
        (format!("{SNAPSHOT_DIR}/{SHOWS_FILE}"), shows.len() as u64),
        (
            format!("{SNAPSHOT_DIR}/{EPISODES_FILE}"),
            episodes.len() as u64,
        ),
    ]
    .into_iter()
    .collect();
    let info = WorldInfo {
        format_version: WORLD_FORMAT_VERSION,
        generator: format!("podscore {}", env!("CARGO_PKG_VERSION")),
        settings: config.settings(),
        summary: WorldSummary {
            rows: rows_per_file,
            brand_new_shows: catalog
                .shows
                .iter()
                .filter(|show| show.created_day.is_some())
                .count() as u64,
            brand_new_from_day: catalog.brand_new_from_day,
            tiers,
            channels,
        },
    };
    if config.objective_labels > 0 {
        objectives::write(
            config,
            &catalog,
            &staging.path,
            config.impressions as u64 + 1,
        )?;
    }
    logs::write_world_info(&staging.path, &info)?;
    staging.commit(out)?;
    Ok(info)
}

/// Writes one channel's impressions in time order, converting a row group at a time so
/// that only the compact rows are ever held whole in memory.
fn write_channel(
    dir: &Path,
    rows: &[traffic::Row],
    kind: CandidateKind,
    host_genre: bool,
    bar: &ProgressBar,
) -> Result<u64, WorldError> {
    let mut writer = ImpressionWriter::create_with(&logs::impressions_path(dir, kind), host_genre)?;
    let mut group = Vec::with_capacity(ROWS_PER_ROW_GROUP);
    for (position, row) in rows.iter().enumerate() {
        if row.kind() != kind {
            continue;
        }
        group.push(row.to_impression(position as u64 + 1));
        if group.len() == ROWS_PER_ROW_GROUP {
            writer.write(&group)?;
            bar.inc(group.len() as u64);
            group.clear();
        }
    }
    writer.write(&group)?;
    bar.inc(group.len() as u64);
    Ok(writer.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SimulateArgs {
        SimulateArgs::new(PathBuf::from("unused"), Preset::Small, 1)
    }

    /// Overrides replace single preset values and keep the rest.
    #[test]
    fn overrides_replace_preset_values() {
        let config = WorldConfig::from_args(&SimulateArgs {
            users: Some(123),
            ad_share: Some(0.5),
            ..args()
        })
        .expect("valid settings");
        assert_eq!(config.users, 123);
        assert_eq!(config.ad_share, 0.5);
        assert_eq!(config.shows, 300);
        assert_eq!(
            config.start_timestamp, 1_788_220_800,
            "2026-09-01T00:00:00Z"
        );
    }

    /// Every invalid setting is reported in one error, not just the first.
    #[test]
    fn every_bad_setting_is_reported() {
        let error = WorldConfig::from_args(&SimulateArgs {
            users: Some(0),
            shows: Some(5),
            ad_share: Some(1.5),
            start: "yesterday".to_string(),
            ad_affinity_correlation: Some(1.2),
            ad_structure: Some(f64::NAN),
            content_embedding_noise: Some(-1.0),
            ..args()
        })
        .expect_err("invalid settings");
        let message = error.to_string();
        for needle in [
            "--users",
            "--shows",
            "--ad-share",
            "--start",
            "--ad-affinity-correlation must be 0 to 1 (got 1.2)",
            "--ad-structure must be 0 to 4 (got NaN)",
            "--content-embedding-noise must be 0 to 10 (got -1)",
        ] {
            assert!(message.contains(needle), "{needle} missing from: {message}");
        }
    }

    /// An ad share that rounds to no ads at all is refused: the trainer needs both kinds.
    #[test]
    fn ad_share_must_leave_both_kinds() {
        let error = WorldConfig::from_args(&SimulateArgs {
            impressions: Some(10),
            ad_share: Some(0.01),
            ..args()
        })
        .expect_err("no ads");
        assert!(
            error.to_string().contains("one kind without impressions"),
            "{error}"
        );
    }

    /// Over random users, shows and hours the ad affinity correlates with the promotion
    /// affinity by the knob's value, and keeps its spread.
    #[test]
    fn ad_affinity_correlates_by_the_knob() {
        use rand::Rng;
        for rho in [0.8, 0.5] {
            let config = WorldConfig {
                ad_affinity_correlation: rho,
                ..WorldConfig::preset(Preset::Small)
            };
            let catalog = catalog::Catalog::build(&config, &|_| {}).expect("catalog");
            let tables = traffic::Tables::new(&config, &catalog).expect("tables");
            let world = traffic::World {
                config: &config,
                catalog: &catalog,
                tables: &tables,
            };
            let mut rng = stream_rng(3, Stream::Users, 99);
            let pairs: Vec<(f64, f64)> = (0..40_000)
                .map(|_| {
                    let placement = traffic::Placement {
                        is_ad: true,
                        user: rng.random_range(0..catalog.users.len() as u32),
                        show: rng.random_range(0..catalog.shows.len() as u32),
                        episode: traffic::NONE,
                        campaign: 0,
                        creative: 0,
                        slot: outcomes::Slot::Midroll,
                        layout: None,
                        format: Some(outcomes::Format::Audio),
                        surface: outcomes::Surface::Home,
                        timestamp: config.start_timestamp + rng.random_range(0..86_400),
                        session_length_s: 900,
                    };
                    let exposure = world.exposure(&placement);
                    (
                        exposure.affinity,
                        outcomes::ad_affinity(&exposure, world.knobs()),
                    )
                })
                .collect();
            let n = pairs.len() as f64;
            let mean = |f: &dyn Fn(&(f64, f64)) -> f64| pairs.iter().map(f).sum::<f64>() / n;
            let (ma, mb) = (mean(&|p| p.0), mean(&|p| p.1));
            let cov = mean(&|p| (p.0 - ma) * (p.1 - mb));
            let (va, vb) = (mean(&|p| (p.0 - ma).powi(2)), mean(&|p| (p.1 - mb).powi(2)));
            let correlation = cov / (va * vb).sqrt();
            assert!(
                (correlation - rho).abs() < 0.05,
                "rho {rho}: correlation {correlation}"
            );
            assert!((vb / va - 1.0).abs() < 0.15, "spread ratio {}", vb / va);
        }
    }

    /// At `--ad-structure 1` the ad-only effects give the ad stream logit about as much
    /// variance as the shared affinity term (the README's "about as much"): measured over
    /// the ad impressions of a small world, printed for the README.
    #[test]
    fn ad_structure_is_as_large_as_the_shared_taste() {
        let config = WorldConfig {
            ad_structure: 1.0,
            ..WorldConfig::preset(Preset::Small)
        };
        let catalog = catalog::Catalog::build(&config, &|_| {}).expect("catalog");
        let tables = traffic::Tables::new(&config, &catalog).expect("tables");
        let world = traffic::World {
            config: &config,
            catalog: &catalog,
            tables: &tables,
        };
        let rows = traffic::generate(&config, &catalog, &|_| {}).expect("rows");
        let (mut own, mut shared, mut structure) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows.iter().filter(|row| row.is_ad) {
            let exposure = world.exposure(&traffic::Placement {
                is_ad: true,
                user: row.user,
                show: row.show,
                episode: row.episode,
                campaign: row.campaign,
                creative: row.creative,
                slot: row.slot,
                layout: row.layout,
                format: row.format,
                surface: row.surface,
                timestamp: row.timestamp,
                session_length_s: row.session_length_s,
            });
            // Everything only ads have: the structure and the creative and campaign
            // effects as grown by the knob.
            own.push(
                outcomes::ad_structure(&exposure)
                    + (1.0 + outcomes::CREATIVE_QUALITY_GROWTH) * exposure.creative_quality
                    + (1.0 + outcomes::CAMPAIGN_QUALITY_GROWTH) * exposure.campaign_quality,
            );
            structure.push(outcomes::ad_structure(&exposure));
            shared.push(outcomes::AD_AFFINITY_WEIGHT * exposure.affinity);
        }
        let variance = |values: &[f64]| {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64
        };
        let ratio = variance(&own) / variance(&shared);
        eprintln!(
            "ad-only variance {:.3} (host, slot-session, format-screen {:.3}), shared affinity term variance {:.3}, ratio {ratio:.2}",
            variance(&own),
            variance(&structure),
            variance(&shared)
        );
        assert!((0.6..=1.6).contains(&ratio), "ratio {ratio}");
    }

    /// How much of the show latent a linear read-out of the content embedding recovers
    /// (mean R^2 over the latent's axes) at the default noise, 1 and 3: printed for the
    /// README, and ordered as its text says.
    #[test]
    fn content_embedding_noise_sets_how_much_latent_is_readable() {
        let readable = |noise: f64| {
            let config = WorldConfig {
                shows: 3_000,
                content_embedding_noise: noise,
                ..WorldConfig::preset(Preset::Small)
            };
            let catalog = catalog::Catalog::build(&config, &|_| {}).expect("catalog");
            let shows = &catalog.shows;
            // Least squares of each latent axis on the embedding and a constant, by the
            // normal equations (17 unknowns, thousands of shows: well conditioned).
            const K: usize = crate::logs::CONTENT_EMBEDDING_DIM + 1;
            let features = |show: &catalog::Show| -> [f64; K] {
                std::array::from_fn(|j| {
                    if j == 0 {
                        1.0
                    } else {
                        f64::from(show.embedding[j - 1])
                    }
                })
            };
            let mut total = 0.0;
            for axis in 0..TASTE_DIM {
                let mut a = [[0.0; K]; K];
                let mut b = [0.0; K];
                for show in shows {
                    let x = features(show);
                    for ((row, target), xi) in a.iter_mut().zip(b.iter_mut()).zip(&x) {
                        *target += xi * show.latent[axis];
                        for (cell, xj) in row.iter_mut().zip(&x) {
                            *cell += xi * xj;
                        }
                    }
                }
                // Gaussian elimination with partial pivoting.
                for column in 0..K {
                    let pivot = (column..K)
                        .max_by(|x, y| a[*x][column].abs().total_cmp(&a[*y][column].abs()))
                        .unwrap_or(column);
                    a.swap(column, pivot);
                    b.swap(column, pivot);
                    let (pivot_row, pivot_value) = (a[column], b[column]);
                    for (row, target) in a.iter_mut().zip(b.iter_mut()).skip(column + 1) {
                        let factor = row[column] / pivot_row[column];
                        for (cell, source) in row.iter_mut().zip(&pivot_row).skip(column) {
                            *cell -= factor * source;
                        }
                        *target -= factor * pivot_value;
                    }
                }
                let mut beta = [0.0; K];
                for row in (0..K).rev() {
                    let rest: f64 = (row + 1..K).map(|j| a[row][j] * beta[j]).sum();
                    beta[row] = (b[row] - rest) / a[row][row];
                }
                let values: Vec<f64> = shows.iter().map(|s| s.latent[axis]).collect();
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                let (mut residual, mut spread) = (0.0, 0.0);
                for (show, value) in shows.iter().zip(&values) {
                    let x = features(show);
                    let fitted: f64 = x.iter().zip(&beta).map(|(x, b)| x * b).sum();
                    residual += (value - fitted).powi(2);
                    spread += (value - mean).powi(2);
                }
                total += 1.0 - residual / spread;
            }
            total / TASTE_DIM as f64
        };
        let (sharp, middle, blurred) = (readable(0.3), readable(1.0), readable(3.0));
        eprintln!(
            "latent R^2 read from the embedding: noise 0.3 {sharp:.3}, 1 {middle:.3}, 3 {blurred:.3}"
        );
        assert!(
            sharp > 0.85 && sharp > middle && middle > blurred,
            "{sharp} {middle} {blurred}"
        );
    }

    /// Different purposes and chunks draw different numbers from the same seed.
    #[test]
    fn random_streams_are_independent() {
        use rand::Rng;
        let first: u64 = stream_rng(9, Stream::Users, 0).random();
        let other_chunk: u64 = stream_rng(9, Stream::Users, 1).random();
        let other_purpose: u64 = stream_rng(9, Stream::Shows, 0).random();
        let again: u64 = stream_rng(9, Stream::Users, 0).random();
        assert_eq!(first, again);
        assert_ne!(first, other_chunk);
        assert_ne!(first, other_purpose);
    }
}
