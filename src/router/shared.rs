//! Shared subscriptions (spec 4.8.2): `$share/{group}/{filter}` names, and
//! the member list of one group with the strategies that pick the one
//! member a message goes to.
//!
//! Pure: no shards, no clock. Randomness comes in as an argument, so the
//! strategies are deterministic under test; the shard that owns a group
//! feeds them from its own generator ([`next_random`]).

use crate::protocol::topic::valid_topic_filter;

/// What every shared subscription's filter string starts with.
pub const SHARE_PREFIX: &str = "$share/";

/// A well-formed `$share/{group}/{filter}`, borrowed from the string the
/// client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareName<'a> {
    pub group: &'a str,
    /// The topic filter the group's members match with.
    pub filter: &'a str,
}

/// Whether the client asked for a shared subscription (well-formed or not):
/// such a filter is never treated as an ordinary one, since `$share` is
/// reserved for this (spec 4.8.2).
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARE_PREFIX)
}

/// Splits `$share/{group}/{filter}`. `None` for anything that is not a
/// well-formed share name: not starting with `$share/`, an empty group, a
/// group holding `+` or `#`, or a missing or invalid filter after it.
pub fn parse(filter: &str) -> Option<ShareName<'_>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let (group, filter) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_topic_filter(filter) {
        return None;
    }
    Some(ShareName { group, filter })
}

/// How a group picks the member for each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each member in turn: the fairest spread when members keep up.
    #[default]
    RoundRobin,
    /// A member at random: no shared cursor to reason about, fair on
    /// average.
    Random,
    /// The same member until it leaves or goes offline, then another (in
    /// turn): keeps a stream on one consumer, for caches and ordering.
    Sticky,
}

/// Which members a choice may fall on.
type Eligible<'a, M> = dyn Fn(&Member<M>) -> bool + 'a;

/// One member as the group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member<M> {
    id: M,
    /// An offline member (a persistent session without a connection) is
    /// chosen only when no online member is left.
    online: bool,
}

/// The members of one shared subscription (one group and filter), in the
/// order they joined. `M` identifies a member (on a shard: its shard and
/// client id).
#[derive(Debug, Clone)]
pub struct Group<M> {
    members: Vec<Member<M>>,
    /// Round robin: where the next search for a member starts.
    next: usize,
    /// Sticky: the member messages currently stick to.
    sticky: Option<M>,
}

impl<M> Default for Group<M> {
    fn default() -> Self {
        Group {
            members: Vec::new(),
            next: 0,
            sticky: None,
        }
    }
}

impl<M: Clone + PartialEq> Group<M> {
    /// Adds a member, or updates its online state if it is one already (a
    /// SUBSCRIBE repeated, a session reconnecting or losing its
    /// connection).
    pub fn join(&mut self, id: M, online: bool) {
        match self.members.iter_mut().find(|member| member.id == id) {
            Some(member) => member.online = online,
            None => self.members.push(Member { id, online }),
        }
    }

    /// Removes a member; `false` if it was not one.
    pub fn leave(&mut self, id: &M) -> bool {
        let Some(at) = self.members.iter().position(|member| &member.id == id) else {
            return false;
        };
        self.members.remove(at);
        // The member after the one removed moved into its place.
        if self.next > at {
            self.next -= 1;
        }
        if self.sticky.as_ref() == Some(id) {
            self.sticky = None;
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member the next message goes to, and whether it is online.
    ///
    /// `exclude` is a member the message is coming back from (it went
    /// offline or left with the message unacknowledged). Preference, in
    /// order: an online member other than `exclude`; an offline one other
    /// than `exclude` (its session queues the message); `exclude` itself,
    /// if still a member, so that a message with nowhere else to go waits
    /// in its session for a reconnect rather than being lost. `random`
    /// is used by [`Strategy::Random`] only.
    pub fn pick(
        &mut self,
        strategy: Strategy,
        random: u64,
        exclude: Option<&M>,
    ) -> Option<(&M, bool)> {
        self.pick_among(strategy, random, exclude, &|_| true)
    }

    /// [`Group::pick`] among the members `admit` lets through only (on a
    /// clustered node, for a message another node's group owner picked
    /// this node for: this node's own members, never a peer node).
    pub fn pick_among(
        &mut self,
        strategy: Strategy,
        random: u64,
        exclude: Option<&M>,
        admit: &dyn Fn(&M) -> bool,
    ) -> Option<(&M, bool)> {
        let other = |member: &Member<M>| admit(&member.id) && exclude != Some(&member.id);
        let tiers: [&Eligible<'_, M>; 3] = [
            &|member| member.online && other(member),
            &other,
            &|member| admit(&member.id),
        ];
        let at = tiers
            .iter()
            .find_map(|eligible| self.choose(strategy, random, eligible))?;
        let member = &self.members[at];
        Some((&member.id, member.online))
    }

    /// The index of the member `strategy` picks among the `eligible` ones.
    fn choose(
        &mut self,
        strategy: Strategy,
        random: u64,
        eligible: &Eligible<'_, M>,
    ) -> Option<usize> {
        match strategy {
            Strategy::RoundRobin => self.round_robin(eligible),
            Strategy::Random => {
                let count = self.members.iter().filter(|m| eligible(m)).count();
                if count == 0 {
                    return None;
                }
                // `count` is at most the member count, so the index fits.
                let nth = (random % count as u64) as usize;
                self.members
                    .iter()
                    .enumerate()
                    .filter(|(_, member)| eligible(member))
                    .nth(nth)
                    .map(|(at, _)| at)
            }
            Strategy::Sticky => {
                let current = self.sticky.as_ref().and_then(|sticky| {
                    self.members
                        .iter()
                        .position(|member| &member.id == sticky && eligible(member))
                });
                let at = current.or_else(|| self.round_robin(eligible))?;
                self.sticky = Some(self.members[at].id.clone());
                Some(at)
            }
        }
    }

    fn round_robin(&mut self, eligible: &Eligible<'_, M>) -> Option<usize> {
        let len = self.members.len();
        let at = (0..len)
            .map(|offset| (self.next + offset) % len)
            .find(|&at| eligible(&self.members[at]))?;
        self.next = (at + 1) % len;
        Some(at)
    }
}

/// Advances a splitmix64 state and returns the next value: cheap, good
/// enough to spread messages, and owned by the shard rather than shared.
pub fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(members: &[(u32, bool)]) -> Group<u32> {
        let mut group = Group::default();
        for &(id, online) in members {
            group.join(id, online);
        }
        group
    }

    fn picks(group: &mut Group<u32>, strategy: Strategy, n: usize) -> Vec<u32> {
        let mut state = 7;
        (0..n)
            .map(|_| {
                let random = next_random(&mut state);
                *group.pick(strategy, random, None).expect("a member").0
            })
            .collect()
    }

    #[test]
    fn parses_well_formed_share_names() {
        assert_eq!(
            parse("$share/g/a/+/b"),
            Some(ShareName {
                group: "g",
                filter: "a/+/b"
            })
        );
        assert_eq!(
            parse("$share/consumers/#"),
            Some(ShareName {
                group: "consumers",
                filter: "#"
            })
        );
        // The filter may itself start with `$` or an empty level.
        assert_eq!(parse("$share/g//x").map(|s| s.filter), Some("/x"));
        assert_eq!(parse("$share/g/$SYS/x").map(|s| s.filter), Some("$SYS/x"));
    }

    #[test]
    fn rejects_malformed_share_names() {
        for bad in [
            "$share/",
            "$share//t",
            "$share/g",
            "$share/g/",
            "$share/g+/t",
            "$share/+/t",
            "$share/#/t",
            "$share/g#/t",
            "$share/g/a/#/b",
            "$share/g/a+",
        ] {
            assert!(is_shared(bad), "{bad}");
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_share_prefix_makes_a_shared_subscription() {
        for plain in ["$share", "$shared/g/t", "share/g/t", "a/$share/g/t"] {
            assert!(!is_shared(plain), "{plain}");
            assert_eq!(parse(plain), None, "{plain}");
        }
    }

    #[test]
    fn round_robin_takes_each_member_in_turn() {
        let mut g = group(&[(1, true), (2, true), (3, true)]);
        assert_eq!(
            picks(&mut g, Strategy::RoundRobin, 7),
            [1, 2, 3, 1, 2, 3, 1]
        );
    }

    #[test]
    fn round_robin_continues_fairly_after_a_member_leaves() {
        let mut g = group(&[(1, true), (2, true), (3, true)]);
        assert_eq!(picks(&mut g, Strategy::RoundRobin, 2), [1, 2]);
        assert!(g.leave(&2));
        assert!(!g.leave(&2));
        assert_eq!(picks(&mut g, Strategy::RoundRobin, 3), [3, 1, 3]);
        g.join(4, true);
        assert_eq!(picks(&mut g, Strategy::RoundRobin, 3), [1, 3, 4]);
    }

    #[test]
    fn offline_members_are_skipped_while_one_is_online() {
        let mut g = group(&[(1, false), (2, true), (3, false)]);
        assert_eq!(picks(&mut g, Strategy::RoundRobin, 3), [2, 2, 2]);
        assert_eq!(picks(&mut g, Strategy::Random, 3), [2, 2, 2]);
        g.join(2, false);
        // Nobody online: offline members queue, in turn.
        let chosen = g.pick(Strategy::RoundRobin, 0, None);
        assert_eq!(chosen, Some((&3, false)));
    }

    #[test]
    fn excluded_member_is_the_last_resort() {
        let mut g = group(&[(1, true), (2, false)]);
        assert_eq!(g.pick(Strategy::RoundRobin, 0, Some(&1)), Some((&2, false)));
        assert_eq!(g.pick(Strategy::Sticky, 0, Some(&2)), Some((&1, true)));
        let mut alone = group(&[(1, false)]);
        assert_eq!(alone.pick(Strategy::Random, 5, Some(&1)), Some((&1, false)));
        let mut empty = Group::<u32>::default();
        assert_eq!(empty.pick(Strategy::RoundRobin, 0, None), None);
        let mut g = group(&[(1, true), (2, true), (3, false)]);
        let odd = |id: &u32| id % 2 == 1;
        assert_eq!(
            g.pick_among(Strategy::RoundRobin, 0, None, &odd),
            Some((&1, true))
        );
        assert_eq!(
            g.pick_among(Strategy::RoundRobin, 0, None, &odd),
            Some((&1, true))
        );
        assert_eq!(
            g.pick_among(Strategy::RoundRobin, 0, Some(&1), &odd),
            Some((&3, false))
        );
        assert_eq!(
            g.pick_among(Strategy::RoundRobin, 0, None, &|_| false),
            None
        );
    }

    #[test]
    fn random_spreads_over_every_member() {
        let mut g = group(&[(1, true), (2, true), (3, true), (4, true)]);
        let chosen = picks(&mut g, Strategy::Random, 4000);
        for id in 1..=4 {
            let share = chosen.iter().filter(|&&c| c == id).count();
            assert!((800..1200).contains(&share), "member {id}: {share}");
        }
    }

    #[test]
    fn sticky_keeps_one_member_until_it_goes() {
        let mut g = group(&[(1, true), (2, true), (3, true)]);
        assert_eq!(picks(&mut g, Strategy::Sticky, 3), [1, 1, 1]);
        g.join(1, false);
        assert_eq!(picks(&mut g, Strategy::Sticky, 2), [2, 2]);
        g.join(1, true);
        assert_eq!(picks(&mut g, Strategy::Sticky, 1), [2], "no switch back");
        g.leave(&2);
        assert_eq!(picks(&mut g, Strategy::Sticky, 2), [3, 3]);
    }

    #[test]
    fn rejoining_updates_without_duplicating() {
        let mut g = group(&[(1, true), (1, true), (2, true)]);
        assert_eq!(picks(&mut g, Strategy::RoundRobin, 4), [1, 2, 1, 2]);
    }
}
