package audit

// DefaultRulesText are the rules audit uses without a rules file: those of
// a Linux server, whose programs, libraries, boot files and configuration
// change only when an administrator changes them.
const DefaultRulesText = `# floe audit: default rules for a Linux server.
#
# To change them: floe audit --print-default-rules > /etc/floe/audit.rules,
# edit, and run floe audit --rules /etc/floe/audit.rules SNAPSHOT.
#
# Syntax (floe audit --help has it all):
#   /PATH RULE      check PATH and everything below it; the longest PATH wins
#   !REGEXP         ignore paths matching REGEXP (anchored at the start)
#   NAME = EXPR     define a rule set from attributes and other rule sets
# Attributes: p perms, u user, g group, s size, m mtime, c ctime, i inode,
#   n link count, x xattrs, S growing size (may only grow), H content.
# Built-in rule sets:
#   R = p+i+n+u+g+s+m+c+H   content and metadata
#   L = p+i+n+u+g           metadata only
#   > = p+u+g+i+n+S         growing logs
#   E =                     only report added and removed paths

# Files rewritten in normal operation: check who may write them, not what
# they hold.
Volatile = p+u+g

# Programs, libraries, boot files and configuration: everything.
/bin              R
/sbin             R
/lib              R
/lib32            R
/lib64            R
/libx32           R
/usr              R
/boot             R
/etc              R
/root             R
# crontabs are where intruders come back from
/var/spool/cron   R
# Software outside the package manager; uncomment if /opt holds no data:
# /opt            R

# Logs may grow, nothing else: a log that shrank or was replaced was
# truncated, rotated or tampered with.
/var/log          >

# /etc: files the system rewrites on its own
!/etc/mtab$
/etc/adjtime         Volatile
/etc/resolv.conf     Volatile
/etc/ld.so.cache     Volatile
!/etc/\.pwd\.lock$
!/etc/\.updated$
!/etc/prelink\.cache$
!/etc/blkid\.tab(\.old)?$
!/etc/lvm/(archive|cache)(/|$)
!/etc/mail/statistics$
!/etc/\.java(/|$)
# etckeeper's repository changes with every commit of /etc
!/etc/\.git(/|$)
!/etc/\.etckeeper$
# Proxmox's cluster file system
!/etc/pve(/|$)

# /boot: GRUB rewrites its environment block at boot; FAT (the EFI system
# partition) has no stable inode numbers
/boot/grub/grubenv   Volatile
/boot/grub2/grubenv  Volatile
/boot/efi            R-i

# /root: caches, editor state and histories
!/root/\.cache(/|$)
!/root/\.npm(/|$)
!/root/\.local/state(/|$)
!/root/\.local/share/(nano|Trash|recently-used\.xbel)(/|$)
!/root/\.(lesshst|viminfo|wget-hsts|python_history|mysql_history|psql_history|sqlite_history|node_repl_history|rnd|selected_editor)$
!/root/\.gnupg/random_seed$
!/root/\.ansible/tmp(/|$)
!/root/snap(/|$)
# shell histories and known hosts grow; a shrunk history was wiped
/root/.bash_history      >
/root/.zsh_history       >
/root/.ssh/known_hosts   >

# at jobs come and go
!/var/spool/cron/(atjobs|atspool)(/|$)

# /var/log: rotated logs come and go, binary journals are rewritten in
# place, some logs are recreated at every boot
!/var/log/journal(/|$)
!/var/log/.*\.[0-9]+(\.(gz|xz|bz2|zst))?$
!/var/log/.*-[0-9]{8}(\.(gz|xz|bz2|zst))?$
!/var/log/.*\.(gz|xz|bz2|zst|old)$
!/var/log/(sa|sysstat)(/|$)
!/var/log/dmesg(\..*)?$
!/var/log/boot\.log$
`
