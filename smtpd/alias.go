package smtpd

import "mta/internal/mailaddr"

// expand returns the real recipients of a: a itself outside the local
// domains, its alias targets inside them (local reports that a was in a
// local domain). An unknown local user is mailaddr.ErrNoSuchUser.
func (s *Server) expand(a mailaddr.Address) (targets []mailaddr.Address, local bool, err error) {
	return s.aliases.Load().Expand(a)
}
