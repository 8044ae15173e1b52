divert(-1)
#
# popwatch.m4 - POP-before-SMTP for sendmail: accept relaying from client addresses that
# popwatch wrote into /etc/mail/relayers.db (a Berkeley DB hash map, no trailing NUL in keys).
#
# Install:
#   cp popwatch.m4 /usr/share/sendmail/cf/hack/      (Debian; elsewhere cf/hack/)
#   add to /etc/mail/sendmail.mc, after FEATURE(`access_db') and before MAILER lines:
#       HACK(`popwatch')dnl
#   then: cd /etc/mail && make          (or: m4 sendmail.mc > sendmail.cf)
#         systemctl reload sendmail
#   popwatch.toml:  key_format = "sendmail"   ipv6_prefix = "IPv6:"
#
# What it does:  for every RCPT, the Local_check_rcpt ruleset (called by sendmail's own
# check_rcpt before the relay checks) looks ${client_addr} up in the map.  A found entry
# (any value: popwatch removes expired ones) returns $#OK, which check_rcpt passes on, so the
# recipient is accepted even when it is not local.  Not found: the ruleset returns nothing
# and the normal checks (access db, relay-domains) decide.  A lookup failure (the map busy
# or broken) is a temporary error, never an open relay.
#
# IPv6 clients appear in ${client_addr} as "IPv6:2001:db8::5"; popwatch writes that form when
# ipv6_prefix = "IPv6:".  Sites that share the map with other tools can give popwatch a
# key_prefix (e.g. "POP:") and define POPWATCH_PREFIX below to the same text.
#
# sendmail reopens the map when the file's mtime changes; popwatch updates it in place (never
# renames a new file over it) and moves the mtime to a later second on every flush.
divert(0)dnl
VERSIONID(`popwatch.m4 1.0 (popwatch POP-before-SMTP)')dnl
ifdef(`POPWATCH_MAP', `', `define(`POPWATCH_MAP', `/etc/mail/relayers')')dnl
ifdef(`POPWATCH_PREFIX', `', `define(`POPWATCH_PREFIX', `')')dnl
LOCAL_CONFIG
# popwatch relay map: key client address, value Unix time of the last login.
Kpopwatch hash -o -a<OK> -T<TMPF> POPWATCH_MAP
LOCAL_RULESETS
SLocal_check_rcpt
R$*		$: $(popwatch POPWATCH_PREFIX`'$&{client_addr} $: <?> $)
R$* <OK>	$# OK
R<TMPF>		$#error $@ 4.3.0 $: "451 Temporary lookup failure of the relay map"
