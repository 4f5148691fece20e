package NgxAcmeT::Adapter;

# Loaded into each nginx-acme t/*.t (PERL5OPT) by run.sh. nginx-acme's
# Test::Nginx::ACME::wait_certificate() waits for nginx-acme's own state
# files (<state>/NAME-HASH.crt); this module keeps certificates in
# <state>/certs/<name>/fullchain.pem. Only that wait is replaced, by one on
# this module's documented layout; every assertion of the tests is theirs.
# NGX_ACME_T_ADAPTER=0 (run.sh --no-adapter) leaves the tests untouched.

use strict;
use warnings;

use File::Spec;
use Socket qw/ AF_INET6 inet_pton /;

INIT {
	return if ($ENV{NGX_ACME_T_ADAPTER} // '1') eq '0';
	return unless defined &Test::Nginx::ACME::wait_certificate;

	no warnings 'redefine';
	*Test::Nginx::ACME::wait_certificate = \&wait_certificate;
}

# nginx-acme's argument is "[SUBDIR/]NAME": SUBDIR is the issuer's
# state_path below the test directory, NAME the certificate's first name
# (nginx-acme also accepts "www." in front of it).

sub wait_certificate {
	my ($self, $cert, %extra) = @_;

	my ($sub, $name) = $cert =~ m!^(?:(.*)/)?([^/]+)$!;
	my $state = defined $sub
		? File::Spec->catdir($self->{state}, $sub) : $self->{state};
	my $tries = ($extra{timeout} // 20) * 5;

	for (1 .. $tries) {
		return 1 if _issued($state, $name);
		select undef, undef, undef, 0.2;
	}

	return;
}

sub _issued {
	my ($state, $name) = @_;

	foreach my $dir (glob File::Spec->catfile($state, 'certs', '*')) {
		next unless -s "$dir/fullchain.pem" && -s "$dir/meta.json";

		foreach my $id (_identifiers("$dir/meta.json")) {
			return 1 if _same($id, $name) || _same($id, "www.$name");
		}
	}

	return 0;
}

sub _identifiers {
	my ($file) = @_;

	open my $fh, '<', $file or return ();
	local $/;
	require JSON::PP;
	my $meta = eval { JSON::PP->new->decode(<$fh>) } or return ();

	return map { $_->{value} } @{ $meta->{identifiers} || [] };
}

sub _same {
	my ($a, $b) = @_;

	return 1 if lc $a eq lc $b;

	# IPv6 addresses in any spelling ("::1", "0000:...:0:1")
	my ($x, $y) = map { $_ =~ /:/ ? inet_pton(AF_INET6, $_) : undef } $a, $b;
	return defined $x && defined $y && $x eq $y;
}

1;
