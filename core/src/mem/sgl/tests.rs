//! Sgl against a model: a flat list of (kind, address) per byte. Segments here are
//! descriptors only; no byte is touched, so fake addresses are fine.

use proptest::prelude::*;

use super::*;
use crate::mem::tag::MemTag;

fn domain() -> DomainId {
    static DOMAIN: std::sync::OnceLock<DomainId> = std::sync::OnceLock::new();
    *DOMAIN.get_or_init(DomainId::allocate)
}

fn tag(kind: MemKind) -> MemTag {
    match kind {
        MemKind::Host => MemTag::HOST,
        other => MemTag::device_side(other, domain()),
    }
}

fn fake(kind: MemKind, addr: usize, len: u32) -> SegRef<'static> {
    SegRef::from_owner(Seg::new(addr, len, tag(kind), true))
}

type Model = Vec<(MemKind, usize)>;

fn flatten(sgl: &Sgl<'_>) -> Model {
    sgl.iter().flat_map(|s| (0..s.len()).map(move |i| (s.kind(), s.addr() + i))).collect()
}

fn check(sgl: &Sgl<'_>, model: &Model) {
    assert_eq!(sgl.len(), model.len());
    assert_eq!(&flatten(sgl), model);
    let kinds = model.iter().fold(KindSet::EMPTY, |set, (k, _)| set.with(*k));
    assert_eq!(sgl.kinds(), kinds);
    assert_eq!(sgl.is_host_only(), kinds.is_host_only());
    assert!(sgl.iter().all(|s| !s.is_empty()), "no empty segments");
    for pair in sgl.segs().windows(2) {
        assert!(!pair[0].can_merge(&pair[1]), "mergeable neighbours left apart");
    }
    let has_device = model.iter().any(|(k, _)| *k != MemKind::Host);
    assert_eq!(sgl.domain().is_some(), has_device);
}

#[derive(Clone, Debug)]
enum Op {
    SplitOff { at_permille: u16, keep_tail: bool },
    Advance { permille: u16 },
    Truncate { permille: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..=1000u16, any::<bool>()).prop_map(|(at_permille, keep_tail)| Op::SplitOff { at_permille, keep_tail }),
        (0..=1000u16).prop_map(|permille| Op::Advance { permille }),
        (0..=1100u16).prop_map(|permille| Op::Truncate { permille }),
    ]
}

fn kind() -> impl Strategy<Value = MemKind> {
    prop_oneof![Just(MemKind::Host), Just(MemKind::IoMem), Just(MemKind::Device)]
}

/// Segments as (kind, len, contiguous-with-previous).
fn segs() -> impl Strategy<Value = Vec<(MemKind, u32, bool)>> {
    prop::collection::vec((kind(), 1..200u32, any::<bool>()), 0..12)
}

fn build(spec: &[(MemKind, u32, bool)]) -> (Sgl<'static>, Model) {
    let mut sgl = Sgl::new();
    let mut model = Model::new();
    let mut next = 0x10_0000usize;
    for &(kind, len, contiguous) in spec {
        if !contiguous {
            next += 0x1000;
        }
        sgl.push(fake(kind, next, len)).expect("one domain, few segments");
        model.extend((0..len as usize).map(|i| (kind, next + i)));
        next += len as usize;
    }
    (sgl, model)
}

fn at(permille: u16, len: usize) -> usize {
    len * permille as usize / 1000
}

proptest! {
    #[test]
    fn operations_match_the_model(spec in segs(), ops in prop::collection::vec(op(), 0..10)) {
        let (mut sgl, mut model) = build(&spec);
        check(&sgl, &model);
        for op in ops {
            match op {
                Op::SplitOff { at_permille, keep_tail } => {
                    let at = at(at_permille, model.len());
                    let tail = sgl.split_off(at).expect("in range");
                    let model_tail = model.split_off(at);
                    check(&sgl, &model);
                    check(&tail, &model_tail);
                    if keep_tail {
                        sgl = tail;
                        model = model_tail;
                    }
                }
                Op::Advance { permille } => {
                    let n = at(permille, model.len());
                    sgl.advance(n).expect("in range");
                    model.drain(..n);
                }
                Op::Truncate { permille } => {
                    let n = at(permille, model.len());
                    sgl.truncate(n);
                    model.truncate(n);
                }
            }
            check(&sgl, &model);
        }
    }

    #[test]
    fn sub_ranges_match_the_model(spec in segs(), a in 0..=1000u16, b in 0..=1000u16) {
        let (sgl, model) = build(&spec);
        let off = at(a.min(b), model.len());
        let end = at(a.max(b), model.len());
        let sub = sgl.sub(off, end - off).expect("in range");
        check(&sub, &model[off..end].to_vec());
        prop_assert!(!sub.is_writable() || sub.is_empty());
    }

    #[test]
    fn append_equals_pushing_everything(x in segs(), y in segs()) {
        let (mut a, mut model) = build(&x);
        let (b, model_b) = build(&y);
        a.append(b).expect("one domain");
        model.extend(model_b);
        check(&a, &model);
    }
}

#[test]
fn out_of_range_and_limits_are_errors() {
    let (mut sgl, _) = build(&[(MemKind::Host, 10, false)]);
    assert!(matches!(sgl.advance(11), Err(Error::OutOfRange { .. })));
    assert!(matches!(sgl.split_off(11), Err(Error::OutOfRange { .. })));
    assert!(matches!(sgl.sub(5, 6), Err(Error::OutOfRange { .. })));
    assert!(matches!(sgl.sub(usize::MAX, 2), Err(Error::OutOfRange { .. })));
    assert_eq!(sgl.len(), 10, "failed calls change nothing");
    let mut big = Sgl::new();
    for i in 0..SGL_MAX_SEGS {
        big.push(fake(MemKind::Host, 0x1000 * (i + 1), 1)).expect("under the limit");
    }
    assert!(matches!(big.push(fake(MemKind::Host, 0x1000_0000, 1)), Err(Error::TooManySegments { .. })));
    // A segment continuing the last one still fits: it merges.
    big.push(fake(MemKind::Host, 0x1000 * SGL_MAX_SEGS + 1, 1)).expect("merges");
    assert_eq!(big.seg_count(), SGL_MAX_SEGS);
}

#[test]
fn lists_never_hold_two_device_domains_or_merge_across_tags() {
    let other = DomainId::allocate();
    let mut sgl = Sgl::from_ref(fake(MemKind::IoMem, 0x1000, 16)).expect("first");
    let foreign = SegRef::from_owner(Seg::new(0x2000, 16, MemTag::device_side(MemKind::Device, other), true));
    let err = sgl.push(foreign).expect_err("second domain refused");
    assert!(matches!(err, Error::MixedDomains { held, offered } if held == domain() && offered == other));
    // Same address range continued, but Host: must stay a separate segment.
    sgl.push(fake(MemKind::Host, 0x1010, 16)).expect("host is fine");
    assert_eq!(sgl.seg_count(), 2);
    assert_eq!(sgl.kinds(), KindSet::of(MemKind::IoMem).with(MemKind::Host));
    sgl.advance(16).expect("drop the IoMem part");
    assert!(sgl.is_host_only(), "the union follows removals");
    assert_eq!(sgl.domain(), None);
}

#[test]
fn host_slices_and_read_only_segments() {
    let data = [1u8; 32];
    let sgl = Sgl::from_host(&data).expect("host");
    assert!(!sgl.is_writable());
    let mut buf = [0u8; 8];
    let mut w = Sgl::from_host_mut(&mut buf).expect("host");
    assert!(w.is_writable());
    w.push(SegRef::host(&data).expect("ro")).expect("push");
    assert!(!w.is_writable(), "one read-only segment makes the list read-only");
}
