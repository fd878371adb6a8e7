package queue

import (
	"bytes"
	"container/list"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Memory is a Store that keeps everything in the process's memory. It is
// meant for tests and development: queued payloads and dead letters die
// with the process, so its 200s promise nothing across a restart.
type Memory struct {
	mu  sync.Mutex
	now func() time.Time
	Limits
	closed bool
	lastID uint64
	// stored is StoredSize of every queued payload and dead letter;
	// evicted is Options.Evicted.
	stored  int64
	evicted func(n int)

	// seen maps a key to when its marker expires (Unix nanoseconds: no
	// pointer for the garbage collector to follow in a map that holds a
	// whole window of keys); expiring lists the same markers in the order
	// they expire so Admit can sweep them cheaply.
	seen     map[string]int64
	expiring []marker

	// queue holds *queued values (every lane's) in the order they entered
	// the queue; claimed entries stay in place so Release needs no
	// reordering. Entries hold no body: bodies holds each payload's once.
	queue  *list.List
	queued map[string]*list.Element
	bodies map[string]*sharedBody // by payload ID

	dead    map[string]*Entry
	deadIDs []string // sorted, which is id order

	paused map[string]bool // paused destinations

	// records are the payloads' records by ID; recordIDs the same IDs in
	// order (admission order: IDs only grow).
	records   map[string]*Record
	recordIDs []string
}

type marker struct {
	key     string
	expires int64
}

// sharedBody is a payload's body, kept while any of its deliveries is
// queued or dead.
type sharedBody struct {
	data []byte
	size int64 // StoredSize: what the payload counts against MaxStored
	refs int   // deliveries queued or dead
}

type queued struct {
	e       Entry
	claimed bool
	// due is when Retry made the entry due again; zero: since it was
	// queued.
	due time.Time
}

// dueAt is when q is due: the time Retry gave, else when it was queued.
func (q *queued) dueAt() time.Time {
	if !q.due.IsZero() {
		return q.due
	}
	return q.e.Queued
}

// NewMemory returns an empty in-memory store that enforces opts.
func NewMemory(opts Options) *Memory {
	m := &Memory{
		now:     opts.Clock(),
		seen:    make(map[string]int64),
		queue:   list.New(),
		queued:  make(map[string]*list.Element),
		bodies:  make(map[string]*sharedBody),
		dead:    make(map[string]*Entry),
		paused:  make(map[string]bool),
		records: make(map[string]*Record),

		evicted: opts.Evicted,
	}
	m.SetLimits(opts.Window, opts.MaxBacklog)
	m.SetMaxStored(opts.MaxStored)
	m.SetHistory(opts.History)
	return m
}

// usable must be called with m.mu held.
func (m *Memory) usable(ctx context.Context) error {
	if m.closed {
		return ErrClosed
	}
	return ctx.Err()
}

// Admit implements Store. The body is copied, so the caller may reuse its
// buffer afterwards, as it could with a store that writes to disk.
func (m *Memory) Admit(ctx context.Context, e *Entry) (Admission, error) {
	evicted := 0
	defer func() {
		if evicted > 0 && m.evicted != nil {
			m.evicted(evicted) // deferred first, so it runs after the unlock
		}
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return 0, err
	}

	now := m.now()
	nowNS := now.UnixNano()
	m.sweep(nowNS)
	if expires, ok := m.seen[e.Key]; ok && nowNS < expires {
		return Duplicate, nil
	}
	if e.MarkerOnly {
		m.mark(e.Key, now)
		return Accepted, nil
	}
	dests := e.Destinations
	if len(dests) == 0 {
		dests = []string{e.Destination}
	}
	// a full backlog must not mark the key seen: the sender retries later
	// and that retry has to be accepted
	if max := m.MaxBacklog(); max > 0 && m.queue.Len()+len(dests) > max {
		return 0, ErrBacklogFull
	}
	size := StoredSize(len(e.Body), e.Request.Headers)
	charge := size
	history := m.History() > 0
	if history {
		charge += RecordCharge
	}
	if max := m.MaxStored(); max > 0 && m.stored+charge > max {
		evicted = m.evict(m.stored + charge - max)
		if m.stored+charge > max {
			return 0, ErrStoreFull
		}
	}

	m.lastID++
	// fixed width, so string order is admission order and Dead can page by id
	e.ID = paddedID(m.lastID)
	e.Payload = e.ID
	e.Received, e.Queued = now, now
	b := &sharedBody{data: bytes.Clone(e.Body), size: size, refs: len(dests)}
	m.bodies[e.ID] = b
	if history {
		b.refs++
		r := NewRecord(e)
		r.Request.Headers = slices.Clone(r.Request.Headers)
		m.records[e.ID] = r
		m.recordIDs = append(m.recordIDs, e.ID)
		m.stored += RecordCharge
	}
	for _, d := range dests {
		q := &queued{e: *e}
		q.e.ID = DeliveryID(e.ID, d, len(dests) == 1)
		q.e.Destination, q.e.Destinations, q.e.Body = d, nil, nil
		q.e.Request.Headers = slices.Clone(e.Request.Headers)
		m.queued[q.e.ID] = m.queue.PushBack(q)
	}
	m.stored += size
	m.mark(e.Key, now)
	return Accepted, nil
}

// unref lets go of one delivery's hold on its payload's body, and frees
// the body with the last one. It must be called with m.mu held.
func (m *Memory) unref(payload string) int64 {
	b, ok := m.bodies[payload]
	if !ok {
		return 0
	}
	if b.refs--; b.refs > 0 {
		return 0
	}
	delete(m.bodies, payload)
	m.stored -= b.size
	return b.size
}

// bodySize is the length of e's payload's body. It must be called with
// m.mu held.
func (m *Memory) bodySize(e *Entry) int {
	if b, ok := m.bodies[e.Payload]; ok {
		return len(b.data)
	}
	return 0
}

// mark marks key seen from now for the window. It must be called with m.mu
// held.
func (m *Memory) mark(key string, now time.Time) {
	expires := now.Add(m.Window()).UnixNano()
	m.seen[key] = expires
	m.expiring = append(m.expiring, marker{key: key, expires: expires})
}

// evict removes the records of done payloads (oldest Done first), then
// the oldest dead letters (by Died) until need bytes are freed or none is
// left, and returns how many dead letters it removed. It must be called
// with m.mu held.
func (m *Memory) evict(need int64) int {
	var done []*Record
	for _, r := range m.records {
		if !r.Done.IsZero() {
			done = append(done, r)
		}
	}
	slices.SortFunc(done, func(a, b *Record) int { return a.Done.Compare(b.Done) })
	for _, r := range done {
		if need <= 0 {
			return 0
		}
		need -= m.dropRecord(r.ID)
	}
	if need <= 0 {
		return 0
	}
	byDeath := slices.Clone(m.deadIDs)
	slices.SortStableFunc(byDeath, func(a, b string) int { return m.dead[a].Died.Compare(m.dead[b].Died) })
	n := 0
	for _, id := range byDeath {
		if need <= 0 {
			break
		}
		need -= m.unref(m.dead[id].Payload)
		delete(m.dead, id)
		n++
	}
	if n > 0 {
		m.deadIDs = slices.DeleteFunc(m.deadIDs, func(id string) bool {
			_, ok := m.dead[id]
			return !ok
		})
	}
	return n
}

// sweep forgets expired markers. The window is fixed, so markers expire in
// the order they were set and each one is looked at once: this stays O(1)
// per Admit, amortised, and bounds memory by the admits of one window.
func (m *Memory) sweep(nowNS int64) {
	n := 0
	for n < len(m.expiring) && nowNS >= m.expiring[n].expires {
		mk := m.expiring[n]
		// the key may have been admitted again since; that marker is newer
		if m.seen[mk.key] == mk.expires {
			delete(m.seen, mk.key)
		}
		n++
	}
	if n > 0 {
		clear(m.expiring[:n]) // let the keys be collected
		m.expiring = m.expiring[n:]
	}
}

// Claim implements Store. Claims last until Ack, Bury, Retry or Release:
// nothing else can take them over within one process. It looks at every
// queued entry: the memory store is for tests and development.
func (m *Memory) Claim(ctx context.Context, max int) ([]*Entry, error) {
	return m.claim(ctx, "", max)
}

func (m *Memory) claim(ctx context.Context, lane string, max int) ([]*Entry, error) {
	max = maxOf(max, 0)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, err
	}
	now := m.now()
	var due []*queued
	for el := m.queue.Front(); el != nil; el = el.Next() {
		if q := el.Value.(*queued); q.e.Destination == lane && !q.claimed && !q.dueAt().After(now) {
			due = append(due, q)
		}
	}
	// stable: entries due at the same time go in queue order
	slices.SortStableFunc(due, func(a, b *queued) int { return a.dueAt().Compare(b.dueAt()) })
	if len(due) > max {
		due = due[:max]
	}
	var out []*Entry
	for _, q := range due {
		q.claimed = true
		e := q.e
		e.BodySize = m.bodySize(&e)
		out = append(out, &e)
	}
	return out, nil
}

// Retry implements Store.
func (m *Memory) Retry(ctx context.Context, e *Entry, due time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	el, ok := m.queued[e.ID]
	if !ok {
		return fmt.Errorf("retrying %s: %w", e.ID, ErrNotFound)
	}
	q := el.Value.(*queued)
	q.e.Attempts, q.e.LastStatus, q.e.LastError = e.Attempts, e.LastStatus, e.LastError
	q.claimed, q.due = false, due
	return nil
}

// NextDue implements Store.
func (m *Memory) NextDue(ctx context.Context) (time.Time, error) {
	return m.nextDue(ctx, "")
}

func (m *Memory) nextDue(ctx context.Context, lane string) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return time.Time{}, err
	}
	var next time.Time
	for el := m.queue.Front(); el != nil; el = el.Next() {
		if q := el.Value.(*queued); q.e.Destination == lane && !q.claimed && !q.due.IsZero() && (next.IsZero() || q.due.Before(next)) {
			next = q.due
		}
	}
	return next, nil
}

// Body implements Store.
func (m *Memory) Body(ctx context.Context, id string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, err
	}
	el, ok := m.queued[id]
	if !ok {
		return nil, fmt.Errorf("body of %s: %w", id, ErrNotFound)
	}
	b, ok := m.bodies[el.Value.(*queued).e.Payload]
	if !ok {
		return nil, fmt.Errorf("body of %s: %w", id, ErrNotFound)
	}
	return bytes.Clone(b.data), nil
}

// Extend implements Store. In-process claims never time out, so there is
// nothing to extend; it only reports ids that are not queued.
func (m *Memory) Extend(ctx context.Context, ids []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	for _, id := range ids {
		if _, ok := m.queued[id]; !ok {
			return fmt.Errorf("extending %s: %w", id, ErrNotFound)
		}
	}
	return nil
}

// Ack implements Store. Acking an id that is no longer queued is not an
// error: the entry is gone either way, which is what the caller wants.
func (m *Memory) Ack(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	if el, ok := m.queued[id]; ok {
		m.queue.Remove(el)
		delete(m.queued, id)
		m.unref(el.Value.(*queued).e.Payload)
	}
	return nil
}

// Bury implements Store. It buries the stored entry, not e, so a caller
// holding a stale copy cannot change the body or key of a dead letter.
func (m *Memory) Bury(ctx context.Context, e *Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	el, ok := m.queued[e.ID]
	if !ok {
		return fmt.Errorf("burying %s: %w", e.ID, ErrNotFound)
	}
	m.queue.Remove(el)
	delete(m.queued, e.ID)

	d := el.Value.(*queued).e
	d.Attempts, d.LastStatus, d.LastError = e.Attempts, e.LastStatus, e.LastError
	d.Died = m.now()
	m.dead[d.ID] = &d
	i, _ := slices.BinarySearch(m.deadIDs, d.ID)
	m.deadIDs = slices.Insert(m.deadIDs, i, d.ID)
	return nil
}

// Release implements Store. Ids that are not queued are skipped.
func (m *Memory) Release(ctx context.Context, ids []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	for _, id := range ids {
		if el, ok := m.queued[id]; ok {
			el.Value.(*queued).claimed = false
		}
	}
	return nil
}

// Dead implements Store.
func (m *Memory) Dead(ctx context.Context, after string, limit int) ([]*Entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, err
	}
	i, found := slices.BinarySearch(m.deadIDs, after)
	if found {
		i++
	}
	page := m.deadIDs[i:]
	if limit < len(page) {
		page = page[:max(limit, 0)]
	}
	out := make([]*Entry, 0, len(page))
	for _, id := range page {
		e := *m.dead[id]
		e.BodySize = m.bodySize(&e) // listings stay small; DeadEntry has the body
		out = append(out, &e)
	}
	return out, nil
}

// DeadEntry implements Store.
func (m *Memory) DeadEntry(ctx context.Context, id string) (*Entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, err
	}
	d, ok := m.dead[id]
	if !ok {
		return nil, fmt.Errorf("dead letter %s: %w", id, ErrNotFound)
	}
	e := *d
	if b, ok := m.bodies[e.Payload]; ok {
		e.Body = bytes.Clone(b.data)
	}
	return &e, nil
}

// DeleteDead implements Store.
func (m *Memory) DeleteDead(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	d, ok := m.dead[id]
	if !ok {
		return fmt.Errorf("dead letter %s: %w", id, ErrNotFound)
	}
	m.unref(d.Payload)
	delete(m.dead, id)
	i, _ := slices.BinarySearch(m.deadIDs, id)
	m.deadIDs = slices.Delete(m.deadIDs, i, i+1)
	return nil
}

// TrimDead implements Store. It sorts every dead letter by Died: the memory
// store is for tests and development, where there are few.
func (m *Memory) TrimDead(ctx context.Context, max int, cutoff time.Time, limit int) ([]*Entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, err
	}
	byDeath := slices.Clone(m.deadIDs)
	slices.SortStableFunc(byDeath, func(a, b string) int { return m.dead[a].Died.Compare(m.dead[b].Died) })
	var out []*Entry
	for _, id := range byDeath {
		d := m.dead[id]
		old := !cutoff.IsZero() && d.Died.Before(cutoff)
		tooMany := max > 0 && len(m.dead) > max
		if len(out) >= limit || (!old && !tooMany) {
			break
		}
		e := *d
		e.BodySize = m.bodySize(&e)
		delete(m.dead, id)
		m.unref(d.Payload)
		out = append(out, &e)
	}
	if len(out) > 0 {
		m.deadIDs = slices.DeleteFunc(m.deadIDs, func(id string) bool {
			_, ok := m.dead[id]
			return !ok
		})
	}
	return out, nil
}

// dropRecord forgets the record id and lets go of its body, and returns
// the bytes freed. It must be called with m.mu held.
func (m *Memory) dropRecord(id string) int64 {
	if _, ok := m.records[id]; !ok {
		return 0
	}
	delete(m.records, id)
	i, _ := slices.BinarySearch(m.recordIDs, id)
	m.recordIDs = slices.Delete(m.recordIDs, i, i+1)
	m.stored -= RecordCharge
	return RecordCharge + m.unref(id)
}

// Attempted implements Recorder.
func (m *Memory) Attempted(ctx context.Context, e *Entry, a Attempt, state string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	if r, ok := m.records[e.Payload]; ok {
		r.Attempted(e.ID, a, state)
	}
	return nil
}

// TrimHistory implements Recorder. It looks at every record: the memory
// store is for tests and development.
func (m *Memory) TrimHistory(ctx context.Context, limit int) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return 0, err
	}
	cutoff := m.now().Add(-m.History())
	var gone []string
	for _, id := range m.recordIDs {
		if r := m.records[id]; !r.Done.IsZero() && !r.Done.After(cutoff) && len(gone) < limit {
			gone = append(gone, id)
		}
	}
	for _, id := range gone {
		m.dropRecord(id)
	}
	return len(gone), nil
}

// copyRecord is a copy of r the caller may keep.
func copyRecord(r *Record) *Record {
	c := *r
	c.Destinations = slices.Clone(r.Destinations)
	c.Attempts = slices.Clone(r.Attempts)
	c.Request.Headers = slices.Clone(r.Request.Headers)
	return &c
}

// Events implements Store.
func (m *Memory) Events(ctx context.Context, q EventQuery) ([]*Record, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, "", err
	}
	if q.Limit <= 0 {
		return []*Record{}, "", nil
	}
	scan := q.Scan
	if scan <= 0 {
		scan = DefaultEventScan
	}
	end := len(m.recordIDs)
	if q.Before != "" {
		end, _ = slices.BinarySearch(m.recordIDs, q.Before)
	}
	out := []*Record{}
	looked := 0
	i := end - 1
	for ; i >= 0 && len(out) < q.Limit && looked < scan; i-- {
		looked++
		if r := m.records[m.recordIDs[i]]; q.Matches(r) {
			out = append(out, copyRecord(r))
		}
	}
	next := ""
	if i >= 0 {
		next = m.recordIDs[i+1]
	}
	return out, next, nil
}

// Event implements Store.
func (m *Memory) Event(ctx context.Context, id string) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, err
	}
	r, ok := m.records[id]
	if !ok {
		return nil, fmt.Errorf("record %s: %w", id, ErrNotFound)
	}
	c := copyRecord(r)
	if b, ok := m.bodies[id]; ok {
		c.Body = bytes.Clone(b.data)
	}
	return c, nil
}

// Resend implements Store.
func (m *Memory) Resend(ctx context.Context, id string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return 0, err
	}
	r, ok := m.records[id]
	if !ok {
		return 0, fmt.Errorf("record %s: %w", id, ErrNotFound)
	}
	now := m.now()
	n := 0
	for _, d := range r.Destinations {
		if _, still := m.queued[d.ID]; d.State != StateDelivered || still {
			continue // not delivered, or its ack has not landed yet
		}
		e := Entry{ID: d.ID, Payload: id, Key: r.Key, Destination: d.Destination, Request: r.Request,
			Received: r.Received, Queued: now}
		e.Request.Headers = slices.Clone(r.Request.Headers)
		m.queued[e.ID] = m.queue.PushBack(&queued{e: e})
		m.bodies[id].refs++
		r.Requeued(d.ID)
		n++
	}
	return n, nil
}

// Replay implements Store. It ignores MaxBacklog: replaying is an
// operator's decision, and refusing it would leave the letters dead.
// Replayed entries join the back of the queue.
func (m *Memory) Replay(ctx context.Context, ids []string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return 0, err
	}
	if ids == nil {
		ids = m.deadIDs
	}
	now := m.now()
	n := 0
	for _, id := range ids {
		d, ok := m.dead[id]
		if !ok {
			continue
		}
		delete(m.dead, id)
		d.Attempts, d.LastStatus, d.LastError = 0, 0, ""
		d.Queued, d.Died = now, time.Time{}
		if r, ok := m.records[d.Payload]; ok {
			r.Requeued(d.ID)
		}
		m.queued[id] = m.queue.PushBack(&queued{e: *d})
		n++
	}
	if n > 0 {
		// one pass, not one per id: replaying everything stays linear
		m.deadIDs = slices.DeleteFunc(m.deadIDs, func(id string) bool {
			_, ok := m.dead[id]
			return !ok
		})
	}
	return n, nil
}

// Stats implements Store. OldestQueued is taken from the front of the
// queue, which is where entries are claimed from.
func (m *Memory) Stats(ctx context.Context) (Stats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return Stats{}, err
	}
	m.sweep(m.now().UnixNano())
	s := Stats{Backlog: m.queue.Len(), Dead: len(m.dead), Keys: len(m.seen), Stored: m.stored, Records: len(m.records)}
	if front := m.queue.Front(); front != nil {
		s.OldestQueued = front.Value.(*queued).e.Queued
	}
	for el := m.queue.Front(); el != nil; el = el.Next() {
		if s.Lanes == nil {
			s.Lanes = make(map[string]int)
		}
		s.Lanes[el.Value.(*queued).e.Destination]++
	}
	return s, nil
}

// SetPaused implements Store.
func (m *Memory) SetPaused(ctx context.Context, destination string, paused bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return err
	}
	if paused {
		m.paused[destination] = true
	} else {
		delete(m.paused, destination)
	}
	return nil
}

// Paused implements Store.
func (m *Memory) Paused(ctx context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(ctx); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(m.paused))
	for d := range m.paused {
		out = append(out, d)
	}
	slices.Sort(out)
	return out, nil
}

// Close implements Store. Everything the store held is dropped.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	m.seen, m.expiring = nil, nil
	m.queue, m.queued, m.bodies = nil, nil, nil
	m.dead, m.deadIDs = nil, nil
	m.paused = nil
	m.records, m.recordIDs = nil, nil
	return nil
}

// Lane implements Store.
func (m *Memory) Lane(destination string) Claimer { return memoryLane{m, destination} }

// memoryLane is one destination's queue: the store's, with Claim and
// NextDue limited to its entries (IDs are unique across lanes, so the rest
// works by ID alone).
type memoryLane struct {
	*Memory
	destination string
}

func (l memoryLane) Claim(ctx context.Context, max int) ([]*Entry, error) {
	return l.claim(ctx, l.destination, max)
}

func (l memoryLane) NextDue(ctx context.Context) (time.Time, error) {
	return l.nextDue(ctx, l.destination)
}

// Interface guards
var (
	_ Store    = (*Memory)(nil)
	_ Claimer  = memoryLane{}
	_ Recorder = memoryLane{}
)

// paddedID formats n as 20 digits, so that string order is numeric order.
func paddedID(n uint64) string {
	var b [20]byte
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[:])
}

func maxOf(a, b int) int {
	if a > b {
		return a
	}
	return b
}
