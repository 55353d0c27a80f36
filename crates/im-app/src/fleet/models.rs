//! The model set: one owner for the configured models and what each upstream lists, merged into
//! the models the scheduler knows, each restricted to the lanes that serve it.
//!
//! A reload changes the configured part, discovery the lanes' catalogues; neither retires the
//! other's models. A catalogue is kept while its upstream is unreachable (a model whose lanes
//! are all down stays known: its requests wait, or get 503), and replaced only by a reading
//! that succeeded: a model is retired when a reachable upstream stops listing it.

use std::collections::BTreeMap;

use crate::config::ModelEntry;

/// What one upstream is known to serve.
#[derive(Clone, Debug, PartialEq)]
pub enum Catalogue {
    /// Never reached yet.
    Unreached,
    /// It answered without a listing (a server with no `/v1/models`): it takes the configured
    /// models, as every upstream did before discovery.
    Unlisted,
    /// Its last listing.
    Listed(Vec<ModelEntry>),
}

/// The configured models and each lane's catalogue.
#[derive(Clone, Debug, Default)]
pub struct ModelSet {
    configured: Vec<ModelEntry>,
    /// By lane name, in the upstreams' order.
    lanes: Vec<(String, Catalogue)>,
}

impl ModelSet {
    /// A set of `configured` models over lanes `names`, none read yet.
    pub fn new(configured: Vec<ModelEntry>, names: &[String]) -> ModelSet {
        let mut set = ModelSet {
            configured,
            lanes: Vec::new(),
        };
        set.set_lanes(names);
        set
    }

    /// The configured part (a reload).
    pub fn set_configured(&mut self, models: Vec<ModelEntry>) {
        self.configured = models;
    }

    /// The configured part.
    pub fn configured(&self) -> &[ModelEntry] {
        &self.configured
    }

    /// The lanes there are now: a lane kept keeps its catalogue, a new one is unread, a gone one
    /// is forgotten.
    pub fn set_lanes(&mut self, names: &[String]) {
        let mut old: BTreeMap<String, Catalogue> =
            std::mem::take(&mut self.lanes).into_iter().collect();
        self.lanes = names
            .iter()
            .map(|n| (n.clone(), old.remove(n).unwrap_or(Catalogue::Unreached)))
            .collect();
    }

    /// What a reading of lane `name` found. `Unreached` keeps what the lane listed before.
    pub fn read(&mut self, name: &str, found: Catalogue) {
        if found != Catalogue::Unreached
            && let Some((_, c)) = self.lanes.iter_mut().find(|(n, _)| n == name)
        {
            *c = found;
        }
    }

    /// Whether some lane was never reached (a model it may serve is not known yet).
    pub fn has_unreached(&self) -> bool {
        self.lanes.iter().any(|(_, c)| *c == Catalogue::Unreached)
    }

    /// The lanes and what each lists (for `/status`).
    pub fn catalogues(&self) -> &[(String, Catalogue)] {
        &self.lanes
    }

    /// The models the scheduler should know. With configured models: those, each on the lanes
    /// whose catalogue lists it (or that list nothing), within its own `upstreams`, with slots
    /// and size learned from a lane that lists it where the configuration leaves them out; a
    /// configured model no lane may serve is left out. Without: every listed model, on the lanes
    /// that list it, with the kinds any of them reports, the fewest slots and the largest size.
    pub fn merged(&self) -> Vec<ModelEntry> {
        if self.configured.is_empty() {
            self.discovered()
        } else {
            self.configured
                .iter()
                .filter_map(|m| self.placed(m))
                .collect()
        }
    }

    fn listing<'a>(&'a self, m: &'a ModelEntry) -> impl Iterator<Item = (&'a str, &'a ModelEntry)> {
        self.lanes.iter().filter_map(move |(n, c)| match c {
            Catalogue::Listed(list) => list
                .iter()
                .find(|e| e.name == m.name || m.aliases.contains(&e.name))
                .map(|e| (n.as_str(), e)),
            _ => None,
        })
    }

    fn placed(&self, m: &ModelEntry) -> Option<ModelEntry> {
        let serving: Vec<&str> = self
            .lanes
            .iter()
            .filter(|(n, c)| {
                !matches!(c, Catalogue::Listed(_)) || self.listing(m).any(|(l, _)| l == n)
            })
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                m.upstreams.is_empty() || m.upstreams.iter().any(|u| super::lane_of_upstream(n, u))
            })
            .collect();
        if serving.is_empty() {
            tracing::warn!(model = %m.name, "no upstream lists this configured model: not offered");
            return None;
        }
        let mut out = m.clone();
        if serving.len() < self.lanes.len() {
            out.upstreams = serving.iter().map(|s| (*s).to_owned()).collect();
        }
        if let Some((_, e)) = self.listing(m).next() {
            out.size_gib = out.size_gib.or(e.size_gib);
        }
        if m.max_in_flight.is_none() {
            // Slots as each listing lane reports them: the fewest as the default, the others
            // where they differ.
            let listed: Vec<(String, u32)> = self
                .listing(m)
                .filter(|(l, _)| serving.contains(l))
                .filter_map(|(l, e)| Some((l.to_owned(), e.max_in_flight?)))
                .collect();
            if let Some(fewest) = listed.iter().map(|(_, s)| *s).min() {
                out.max_in_flight = Some(fewest);
                out.slots_on = listed.into_iter().filter(|(_, s)| *s != fewest).collect();
            }
        }
        Some(out)
    }

    fn discovered(&self) -> Vec<ModelEntry> {
        let mut by_name: BTreeMap<&str, (ModelEntry, Vec<String>)> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for (lane, c) in &self.lanes {
            let Catalogue::Listed(list) = c else { continue };
            for e in list {
                let (merged, lanes) = by_name.entry(&e.name).or_insert_with(|| {
                    order.push(&e.name);
                    (e.clone(), Vec::new())
                });
                for k in &e.kinds {
                    if !merged.kinds.contains(k) {
                        merged.kinds.push(k.clone());
                    }
                }
                // Guessed only while no lane's server said what it does.
                merged.kinds_guessed &= e.kinds_guessed;
                if let Some(s) = e.max_in_flight {
                    merged.slots_on.push((lane.clone(), s));
                }
                merged.kinds_on.push((lane.clone(), e.kinds.clone()));
                merged.size_gib = match (merged.size_gib, e.size_gib) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                lanes.push(lane.clone());
            }
        }
        order
            .into_iter()
            .filter_map(|n| by_name.remove(n))
            .map(|(mut m, lanes)| {
                if lanes.len() < self.lanes.len() {
                    m.upstreams = lanes;
                }
                // The fewest slots as the default, the others where they differ.
                if let Some(fewest) = m.slots_on.iter().map(|(_, s)| *s).min() {
                    m.max_in_flight = Some(fewest);
                    m.slots_on.retain(|(_, s)| *s != fewest);
                }
                // Every kind some lane lists; the lanes that list fewer say which.
                let all = m.kinds.clone();
                m.kinds_on
                    .retain(|(_, kinds)| all.iter().any(|k| !kinds.contains(k)));
                m
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, kinds: &[&str]) -> ModelEntry {
        ModelEntry {
            name: name.into(),
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            max_in_flight: Some(2),
            ..Default::default()
        }
    }

    fn names(ms: &[ModelEntry]) -> Vec<(&str, Vec<&str>)> {
        ms.iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.upstreams.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    fn lanes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn discovered_models_run_only_where_they_are_listed() {
        let mut set = ModelSet::new(Vec::new(), &lanes(&["a", "b", "c"]));
        set.read("a", Catalogue::Listed(vec![model("sd", &["txt2img"])]));
        set.read(
            "b",
            Catalogue::Listed(vec![model("llm", &["txt2txt"]), model("sd", &["txt2img"])]),
        );
        assert_eq!(
            names(&set.merged()),
            [("sd", vec!["a", "b"]), ("llm", vec!["b"])]
        );
        assert!(set.has_unreached(), "c was never read");
    }

    #[test]
    fn a_kind_only_some_lanes_list_is_served_only_there() {
        let mut set = ModelSet::new(Vec::new(), &lanes(&["a", "b"]));
        set.read("a", Catalogue::Listed(vec![model("llava", &["txt2txt"])]));
        set.read(
            "b",
            Catalogue::Listed(vec![model("llava", &["txt2txt", "img2txt"])]),
        );
        let merged = set.merged();
        assert_eq!(merged[0].kinds, ["txt2txt", "img2txt"]);
        assert_eq!(
            merged[0].kinds_on,
            [("a".to_owned(), vec!["txt2txt".to_owned()])],
            "a's server said nothing of vision: no image goes there"
        );
    }

    #[test]
    fn an_unreachable_lane_keeps_its_models_and_a_reachable_one_retires_them() {
        let mut set = ModelSet::new(Vec::new(), &lanes(&["a"]));
        set.read("a", Catalogue::Listed(vec![model("llm", &["txt2txt"])]));
        set.read("a", Catalogue::Unreached);
        assert_eq!(names(&set.merged()), [("llm", vec![])]);
        set.read("a", Catalogue::Listed(Vec::new()));
        assert!(set.merged().is_empty());
    }

    #[test]
    fn configured_models_go_to_lanes_that_list_them_or_list_nothing() {
        let configured = vec![
            ModelEntry {
                max_in_flight: None,
                ..model("llm", &["txt2txt"])
            },
            model("gone", &["txt2txt"]),
        ];
        let mut set = ModelSet::new(configured, &lanes(&["a", "b", "c"]));
        let mut listed = model("llm", &["txt2txt"]);
        listed.max_in_flight = Some(8);
        set.read("a", Catalogue::Listed(vec![listed]));
        set.read("b", Catalogue::Listed(vec![model("other", &["embed"])]));
        set.read("c", Catalogue::Unlisted);
        let merged = set.merged();
        assert_eq!(
            names(&merged),
            [("llm", vec!["a", "c"]), ("gone", vec!["c"])]
        );
        assert_eq!(
            merged[0].max_in_flight,
            Some(8),
            "slots learned where listed"
        );
        // Once every lane lists, a model none lists is not offered.
        set.read("c", Catalogue::Listed(vec![model("llm", &["txt2txt"])]));
        assert_eq!(names(&set.merged()), [("llm", vec!["a", "c"])]);
    }

    #[test]
    fn a_configured_models_own_upstreams_restrict_further() {
        let mut m = model("llm", &["txt2txt"]);
        m.upstreams = vec!["b".into()];
        let mut set = ModelSet::new(vec![m], &lanes(&["a", "b"]));
        set.read("a", Catalogue::Listed(vec![model("llm", &["txt2txt"])]));
        set.read("b", Catalogue::Listed(vec![model("llm", &["txt2txt"])]));
        assert_eq!(names(&set.merged()), [("llm", vec!["b"])]);
    }

    #[test]
    fn each_lane_keeps_the_slots_its_server_reports() {
        let mut set = ModelSet::new(Vec::new(), &lanes(&["a", "b"]));
        let mut wide = model("llm", &["txt2txt"]);
        wide.max_in_flight = Some(8);
        set.read("a", Catalogue::Listed(vec![model("llm", &["txt2txt"])]));
        set.read("b", Catalogue::Listed(vec![wide]));
        let merged = set.merged();
        assert_eq!(merged[0].max_in_flight, Some(2));
        assert_eq!(merged[0].slots_on, [("b".to_owned(), 8)]);
    }

    #[test]
    fn lanes_that_stay_keep_their_catalogues() {
        let mut set = ModelSet::new(Vec::new(), &lanes(&["a", "b"]));
        set.read("a", Catalogue::Listed(vec![model("llm", &["txt2txt"])]));
        set.set_lanes(&lanes(&["a", "c"]));
        assert_eq!(
            set.catalogues()[0].1,
            Catalogue::Listed(vec![model("llm", &["txt2txt"])])
        );
        assert_eq!(set.catalogues()[1].1, Catalogue::Unreached);
    }
}
