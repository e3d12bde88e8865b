"""SPICE on the wire, in one place.

`spice.link` is a small SPICE client link layer: the link message and
reply, ticket authentication, mini-header framing and a main + inputs
`Session` whose reader threads answer SET_ACK and PING. It exists so a
test can put on the wire what no real client sends (an oversized or
unknown message, a header that lies about its size) and see what the
proxy and the hypervisor do with it. ryll stays the client of every
ordinary console.

Imports only common (and, lazily, `cryptography` for the ticket and the
certificate subject; tempest depends on it).
"""
