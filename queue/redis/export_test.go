package redis

// StopLiveness stops renewing the store's liveness key, as a killed
// process would, without closing anything else.
func (r *Store) StopLiveness() { r.stopAlive() }
