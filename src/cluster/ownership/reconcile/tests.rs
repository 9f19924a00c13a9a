//! The reconciler's rules, one scenario each, on a clock that moves only
//! when the test says so.

use super::*;

const SETTLE: Duration = Duration::from_secs(1);
const DEAD_AFTER: Duration = Duration::from_secs(300);
const RETRY: Duration = Duration::from_secs(1);
const PAUSE: Duration = Duration::from_millis(100);

fn config(bootstrap_expect: usize) -> ReconcilerConfig {
    ReconcilerConfig {
        bootstrap_expect,
        dead_after: DEAD_AFTER,
        settle: SETTLE,
        retry: RETRY,
        pause: PAUSE,
    }
}

/// Node `nK` has raft id `K`.
fn id(name: &str) -> NodeId {
    name[1..].parse().expect("a name like n3")
}

fn member(name: &str, has_state: bool) -> Member {
    Member {
        name: name.to_owned(),
        raft: Some(RaftMember {
            id: id(name),
            has_state,
        }),
        reachable: true,
    }
}

fn fresh(names: &[&str]) -> Vec<Member> {
    names.iter().map(|name| member(name, false)).collect()
}

fn nodes(names: &[&str]) -> BTreeMap<NodeId, String> {
    names
        .iter()
        .map(|name| (id(name), name.to_string()))
        .collect()
}

fn ids(names: &[&str]) -> BTreeSet<NodeId> {
    names.iter().map(|name| id(name)).collect()
}

/// The raft of a leader with these voters and learners, every learner
/// caught up.
fn leading(voters: &[&str], learners: &[&str]) -> RaftView {
    RaftView {
        has_state: true,
        is_leader: true,
        voters: nodes(voters),
        learners: nodes(learners),
        changing: false,
        caught_up: ids(learners),
    }
}

struct Test {
    reconciler: Reconciler,
    now: Instant,
}

impl Test {
    fn new(name: &str, bootstrap_expect: usize) -> Test {
        let now = Instant::now();
        Test {
            reconciler: Reconciler::new(config(bootstrap_expect), name, id(name), now),
            now,
        }
    }

    fn members(&mut self, members: Vec<Member>) {
        self.reconciler.handle_members(members, self.now);
    }

    fn after(&mut self, elapsed: Duration) {
        self.now += elapsed;
    }

    /// The next action, reported done at once.
    fn action(&mut self, raft: &RaftView) -> Option<Action> {
        let action = self.reconciler.poll_action(raft, self.now);
        if action.is_some() {
            self.reconciler.handle_done(true, self.now);
            self.after(PAUSE);
        }
        action
    }
}

fn adds(name: &str) -> Option<Action> {
    Some(Action::AddLearner {
        id: id(name),
        name: name.to_owned(),
    })
}

fn sets_voters(names: &[&str]) -> Option<Action> {
    Some(Action::SetVoters(ids(names)))
}

fn removes(names: &[&str]) -> Option<Action> {
    Some(Action::RemoveLearners(ids(names)))
}

fn initialize(names: &[&str]) -> Option<Action> {
    Some(Action::Initialize(
        names
            .iter()
            .map(|name| (id(name), BasicNode::new(*name)))
            .collect(),
    ))
}

#[test]
fn the_smallest_name_forms_the_raft_once_the_view_holds_still() {
    let mut test = Test::new("n1", 3);
    let raft = RaftView::default();
    test.members(fresh(&["n2", "n3"]));
    assert_eq!(test.action(&raft), None, "the view is new");
    test.after(SETTLE);
    assert_eq!(test.action(&raft), initialize(&["n1", "n2", "n3"]));

    // The others wait to be added.
    for name in ["n2", "n3"] {
        let mut test = Test::new(name, 3);
        test.members(fresh(&["n1", "n2", "n3"]));
        test.after(SETTLE);
        assert_eq!(test.action(&raft), None, "{name} is not the smallest");
    }
}

#[test]
fn no_raft_is_formed_short_of_the_expected_members() {
    let mut test = Test::new("n1", 3);
    test.members(fresh(&["n2"]));
    test.after(SETTLE * 10);
    assert_eq!(test.action(&RaftView::default()), None);
    // Every member known: the view changes, and must settle again.
    test.members(fresh(&["n2", "n3"]));
    assert_eq!(test.action(&RaftView::default()), None);
    test.after(SETTLE);
    assert!(test.action(&RaftView::default()).is_some());
}

#[test]
fn no_raft_is_formed_while_a_member_has_state_or_has_not_said() {
    let raft = RaftView::default();
    let mut test = Test::new("n1", 3);
    test.members(vec![member("n2", false), member("n3", true)]);
    test.after(SETTLE);
    assert_eq!(test.action(&raft), None, "n3 belongs to a raft");

    let mut unknown = member("n3", false);
    unknown.raft = None;
    test.members(vec![member("n2", false), unknown]);
    test.after(SETTLE);
    assert_eq!(test.action(&raft), None, "n3 has not said");

    // A node with state never forms another raft.
    test.members(fresh(&["n2", "n3"]));
    test.after(SETTLE);
    let member_of_one = RaftView {
        has_state: true,
        ..RaftView::default()
    };
    assert_eq!(test.action(&member_of_one), None);
}

#[test]
fn a_single_node_cluster_forms_alone_with_bootstrap_expect_1() {
    let mut test = Test::new("n1", 1);
    test.after(SETTLE);
    assert_eq!(test.action(&RaftView::default()), initialize(&["n1"]));
}

#[test]
fn at_most_five_voters_and_an_odd_number() {
    let mut test = Test::new("n1", 3);
    test.members(fresh(&["n2", "n3", "n4", "n5", "n6", "n7"]));
    test.after(SETTLE);
    assert_eq!(
        test.action(&RaftView::default()),
        initialize(&["n1", "n2", "n3", "n4", "n5"])
    );
    let mut test = Test::new("n1", 3);
    test.members(fresh(&["n2", "n3", "n4"]));
    test.after(SETTLE);
    assert_eq!(
        test.action(&RaftView::default()),
        initialize(&["n1", "n2", "n3"])
    );
}

#[test]
fn the_leader_adds_newcomers_then_promotes_them_to_five_voters() {
    let mut test = Test::new("n1", 3);
    test.members(vec![
        member("n2", true),
        member("n3", true),
        member("n4", false),
        member("n5", false),
    ]);
    let mut raft = leading(&["n1", "n2", "n3"], &[]);
    assert_eq!(test.action(&raft), adds("n4"));
    raft.learners = nodes(&["n4"]);
    // n4 caught up, n5 not a learner yet: 4 would be even, so n5 first.
    raft.caught_up = ids(&["n4"]);
    assert_eq!(test.action(&raft), adds("n5"));
    raft.learners = nodes(&["n4", "n5"]);
    assert_eq!(test.action(&raft), None, "n5 is still catching up");
    raft.caught_up = ids(&["n4", "n5"]);
    assert_eq!(
        test.action(&raft),
        sets_voters(&["n1", "n2", "n3", "n4", "n5"])
    );
    raft = leading(&["n1", "n2", "n3", "n4", "n5"], &[]);
    assert_eq!(test.action(&raft), None, "nothing more to do");

    // A sixth node stays a learner.
    test.members(vec![
        member("n2", true),
        member("n3", true),
        member("n4", true),
        member("n5", true),
        member("n6", false),
    ]);
    raft.learners = nodes(&["n6"]);
    raft.caught_up = ids(&["n6"]);
    assert_eq!(test.action(&raft), None);
}

#[test]
fn a_voter_down_within_the_hold_stays_then_is_replaced_and_removed() {
    let mut test = Test::new("n1", 3);
    test.members(vec![member("n2", true), member("n4", true)]);
    let raft = leading(&["n1", "n2", "n3"], &["n4"]);
    assert_eq!(test.action(&raft), None, "n3 only just went");
    test.after(DEAD_AFTER / 2);
    assert_eq!(test.action(&raft), None, "n3 is within the hold");
    test.after(DEAD_AFTER / 2);
    assert_eq!(
        test.action(&raft),
        sets_voters(&["n1", "n2", "n4"]),
        "n3 replaced by the live learner"
    );
    let raft = leading(&["n1", "n2", "n4"], &["n3"]);
    assert_eq!(test.action(&raft), removes(&["n3"]));
}

#[test]
fn a_dead_voter_without_a_replacement_leaves_an_odd_number() {
    let mut test = Test::new("n1", 3);
    test.members(vec![
        member("n2", true),
        member("n3", true),
        member("n4", true),
    ]);
    let raft = leading(&["n1", "n2", "n3", "n4", "n5"], &[]);
    test.action(&raft);
    test.after(DEAD_AFTER);
    // n5 dead, 4 left: rounded down to 3, keeping the leader and by name.
    assert_eq!(test.action(&raft), sets_voters(&["n1", "n2", "n3"]));
}

#[test]
fn a_node_back_under_a_new_raft_id_replaces_its_old_self_at_once() {
    let mut test = Test::new("n1", 3);
    let reborn = Member {
        raft: Some(RaftMember {
            id: 33,
            has_state: false,
        }),
        ..member("n3", false)
    };
    test.members(vec![member("n2", true), reborn]);
    let mut raft = leading(&["n1", "n2", "n3"], &[]);
    assert_eq!(
        test.action(&raft),
        Some(Action::AddLearner {
            id: 33,
            name: "n3".into()
        })
    );
    raft.learners.insert(33, "n3".into());
    raft.caught_up.insert(33);
    let mut voters = ids(&["n1", "n2"]);
    voters.insert(33);
    assert_eq!(test.action(&raft), Some(Action::SetVoters(voters.clone())));
    let raft = RaftView {
        voters: [(1, "n1".to_owned()), (2, "n2".into()), (33, "n3".into())].into(),
        learners: nodes(&["n3"]),
        ..leading(&[], &[])
    };
    assert_eq!(test.action(&raft), removes(&["n3"]));
}

#[test]
fn no_voter_change_without_a_reachable_majority_on_both_sides() {
    let mut test = Test::new("n1", 3);
    let suspect = Member {
        reachable: false,
        ..member("n2", true)
    };
    test.members(vec![suspect, member("n4", true)]);
    let raft = leading(&["n1", "n2", "n3"], &["n4"]);
    test.action(&raft);
    test.after(DEAD_AFTER);
    // n3 dead and n2 suspect: {n1, n2, n4} would have 2 of 3 reachable,
    // but the current voters only 1 of 3.
    assert_eq!(test.action(&raft), None);
    test.members(vec![member("n2", true), member("n4", true)]);
    assert_eq!(test.action(&raft), sets_voters(&["n1", "n2", "n4"]));
}

#[test]
fn one_change_at_a_time_and_a_pause_after_a_failure() {
    let mut test = Test::new("n1", 3);
    test.members(vec![member("n2", true), member("n3", false)]);
    let raft = leading(&["n1", "n2"], &[]);
    let add = test.reconciler.poll_action(&raft, test.now);
    assert!(matches!(add, Some(Action::AddLearner { id: 3, .. })));
    assert_eq!(test.reconciler.poll_action(&raft, test.now), None, "busy");
    test.reconciler.handle_done(false, test.now);
    assert_eq!(test.reconciler.poll_action(&raft, test.now), None, "paused");
    test.after(RETRY);
    assert_eq!(test.reconciler.poll_action(&raft, test.now), add);
}

#[test]
fn nothing_while_a_change_is_under_way_or_when_not_leading() {
    let mut test = Test::new("n1", 3);
    test.members(vec![member("n2", true), member("n3", false)]);
    let changing = RaftView {
        changing: true,
        ..leading(&["n1", "n2"], &[])
    };
    assert_eq!(test.action(&changing), None);
    let following = RaftView {
        is_leader: false,
        ..leading(&["n1", "n2"], &[])
    };
    assert_eq!(test.action(&following), None);
}
