# PitrTap: runs PostgreSQL's own TAP tests with pitr as archive_command and restore_command.
#
# scripts/pg_tap.sh loads this module into every test file through PERL5OPT, before the test
# compiles. It replaces PostgreSQL::Test::Cluster's `cp` archiving with pitr; PostgreSQL's files
# stay as they are. Each node that archives gets a file repository of its own in its
# archive_dir, `pitr init`-ed for its cluster; a node restores from its root node's repository,
# as Cluster.pm's `cp` does from the root's archive_dir. Nodes made from a backup keep the
# backup's archive_command and so push into the root's repository (same system identifier).
#
# Environment (set by scripts/pg_tap.sh):
#   PITR_TAP_PITR   the pitr binary
#   PITR_TAP_MODE   `defaults`, or `no-lookahead` for archive_push_parallel = 1 and
#                   archive_get_prefetch = 0
# The steps of PostgreSQL's tests that read or write an archive directory themselves call the
# helpers below (wait_for_archived, push_file, push_wal_dir) through the patches in
# tests/pg_tap/patches/; docs/pg-tap.md lists them.
package PitrTap;

use strict;
use warnings;

# Only test scripts load the rest: prove, and the perl one-liners that tests and servers run,
# load this module too (PERL5OPT) and must not start a test harness of their own. A test
# script takes PERL5OPT out of what it passes on.
return 1
  unless defined $ENV{PITR_TAP_PITR} && $0 =~ m{(?:\A|/)t/[^/]+\.pl\z};
delete $ENV{PERL5OPT};

require File::Path;
require IPC::Run;
require PostgreSQL::Test::Utils;
require PostgreSQL::Test::Cluster;

my $pitr = $ENV{PITR_TAP_PITR};
my $mode = $ENV{PITR_TAP_MODE} // 'defaults';
die "PitrTap: PITR_TAP_MODE must be defaults or no-lookahead, not $mode\n"
  unless $mode eq 'defaults' || $mode eq 'no-lookahead';

# Settings for every pitr call, as flags: the server passes its own environment to
# archive_command, not the test's.
sub mode_flags
{
	return $mode eq 'no-lookahead'
	  ? ('--archive-push-parallel', '1', '--archive-get-prefetch', '0')
	  : ();
}

sub repo { my ($node) = @_; return $node->archive_dir; }

# A shell word for postgresql.conf's single-quoted value: double quotes, no single quote.
sub shell_word
{
	my ($word) = @_;
	die "PitrTap: cannot quote $word\n" if $word =~ /['"\\\$`]/;
	return qq{"$word"};
}

sub command_line
{
	my ($node, @args) = @_;
	return join ' ', shell_word($pitr), '--repo', shell_word(repo($node)),
	  mode_flags(), @args;
}

# Runs pitr; returns its exit code, stderr and stdout.
sub run_pitr
{
	my (@args) = @_;
	my ($stdout, $stderr) = ('', '');
	IPC::Run::run([ $pitr, @args ], '<', \undef, '>', \$stdout, '2>', \$stderr);
	return ($? >> 8, $stderr, $stdout);
}

sub pitr_ok
{
	my ($what, @args) = @_;
	my ($code, $stderr) = run_pitr(@args);
	die "PitrTap: $what: pitr @args exited $code: $stderr" if $code != 0;
	return;
}

# `pitr init` for the cluster in `$pgdata`; harmless when the repository is that cluster's.
sub init_repo
{
	my ($node, $pgdata) = @_;
	pitr_ok('init', '--repo', repo($node), 'init', '--pgdata', $pgdata);
	return;
}

# The archive_command that stores into `$node`'s repository. history_only: only timeline
# history files, every other file reported archived without storing it (025's
# cp_history_files); no look-ahead then, which would store the segments too.
sub archive_command
{
	my ($node, %opts) = @_;
	if ($opts{history_only})
	{
		my $push = join ' ', shell_word($pitr), '--repo', shell_word(repo($node)),
		  '--archive-push-parallel', '1', 'archive-push', '"%p"';
		return qq{case "%f" in *.history) exec $push;; esac};
	}
	return command_line($node, 'archive-push', '"%p"');
}

sub restore_command
{
	my ($root_node) = @_;
	return command_line($root_node, 'archive-get', '"%f"', '"%p"');
}

no warnings 'redefine';

*PostgreSQL::Test::Cluster::enable_archiving = sub {
	my ($self) = @_;
	my $name = $self->name;
	print "### Enabling WAL archiving with pitr for node \"$name\"\n";
	init_repo($self, $self->data_dir);
	my $command = archive_command($self);
	$self->append_conf(
		'postgresql.conf', qq(
archive_mode = on
archive_command = '$command'
));
	return;
};

*PostgreSQL::Test::Cluster::enable_restoring = sub {
	my ($self, $root_node, $standby) = @_;
	my $name = $self->name;
	print "### Enabling WAL restore with pitr for node \"$name\"\n";
	# A root that never archived has an empty archive_dir, where `cp` finds nothing: an
	# initialised empty repository answers the same (archive-get exits 1). `pitr init` again
	# for the same cluster changes nothing.
	init_repo($root_node, $root_node->data_dir);
	my $command = restore_command($root_node);
	$self->append_conf(
		$self->_recovery_file, qq(
restore_command = '$command'
));
	if ($standby)
	{
		$self->set_standby_mode();
	}
	else
	{
		$self->set_recovery_mode();
	}
	return;
};

# Cluster.pm's END stops and removes the nodes one after the other, in creation order: a root
# node's directory, and so its repository, goes while its standbys still run. `cp` from a
# missing directory is "not found"; pitr rightly refuses a missing repository (archive-get
# exits 131, so the standby's recovery stops and its own stop then fails the test). At exit
# the directories are removed only after every node has stopped.
my @clean_at_exit;
my $clean_node = \&PostgreSQL::Test::Cluster::clean_node;
*PostgreSQL::Test::Cluster::clean_node = sub {
	my ($self) = @_;
	if (${^GLOBAL_PHASE} eq 'END')
	{
		push @clean_at_exit, $self;
		return;
	}
	return $clean_node->($self);
};

use warnings 'redefine';

# Runs after Cluster.pm's END (END blocks run last defined first; Cluster.pm is loaded after
# this file is compiled).
END
{
	$clean_node->($_) for @clean_at_exit;
}

# Waits until `$file` can be fetched from `$node`'s repository; true once it can, false on
# timeout (as poll_query_until). Any answer but "found" or "not found" is an error.
sub wait_for_archived
{
	my ($node, $file) = @_;
	my $dest = $node->basedir . "/pitr-tap-$file";
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (time < $deadline)
	{
		my ($code, $stderr) =
		  run_pitr('--repo', repo($node), '--archive-get-prefetch', '0',
			'archive-get', $file, $dest);
		if ($code == 0)
		{
			unlink $dest;
			return 1;
		}
		die "PitrTap: archive-get $file exited $code: $stderr" if $code != 1;
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

# Stores one WAL or history file into `$node`'s repository, as archive_command would.
sub push_file
{
	my ($node, $path) = @_;
	pitr_ok("archive-push $path", '--repo', repo($node), '--archive-push-parallel',
		'1', 'archive-push', $path);
	return;
}

# A fresh repository for the cleanly stopped cluster `$node`, holding the WAL and history
# files of its pg_wal (RewindTest's "archive" mode, which moves pg_wal into the archive).
# Segments after the one of the shutdown checkpoint, the last record, are recycled or
# preallocated files that hold no WAL of theirs: PostgreSQL never archives them, and
# archive-push refuses them (their page addresses are not their names').
sub push_wal_dir
{
	my ($node) = @_;
	my $pgdata = $node->data_dir;
	my $wal = "$pgdata/pg_wal";
	my ($control, $stderr) = ('', '');
	IPC::Run::run([ 'pg_controldata', '-D', $pgdata ], '>', \$control, '2>', \$stderr)
	  or die "PitrTap: pg_controldata -D $pgdata: $stderr";
	$control =~ /^Database cluster state:\s*shut down$/m
	  or die "PitrTap: $pgdata is not cleanly shut down";
	my ($last) = $control =~ /^Latest checkpoint's REDO WAL file:\s*([0-9A-F]{24})$/m
	  or die "PitrTap: no REDO WAL file in pg_controldata -D $pgdata";
	File::Path::rmtree(repo($node));
	mkdir repo($node) or die "PitrTap: mkdir " . repo($node) . ": $!";
	init_repo($node, $pgdata);
	opendir(my $dh, $wal) or die "PitrTap: opendir $wal: $!";
	my @files = sort grep {
		(/^[0-9A-F]{24}$/ && substr($_, 8) le substr($last, 8))
		  || /^[0-9A-F]{8}\.history$/
	} readdir $dh;
	closedir $dh;
	push_file($node, "$wal/$_") for @files;
	return;
}

1;
