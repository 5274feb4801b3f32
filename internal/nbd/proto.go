package nbd

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// Only what this server speaks is listed.

const (
	magicInit        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt         = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698
	magicStructReply = 0x668e33ef
)

// handshake flags (server) and client flags
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
)

// transmission flags
const (
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagSendDF          = 1 << 7
	tflagCanMultiConn    = 1 << 8
)

// options
const (
	optExportName        = 1
	optAbort             = 2
	optList              = 3
	optStartTLS          = 5
	optInfo              = 6
	optGo                = 7
	optStructuredReply   = 8
	optListMetaContext   = 9
	optSetMetaContext    = 10
	optExtendedHeaders   = 11 // not supported: answered with repErrUnsup
	repAck               = 1
	repServer            = 2
	repInfo              = 3
	repMetaContext       = 4
	repErrUnsup          = 1<<31 + 1
	repErrPolicy         = 1<<31 + 2
	repErrInvalid        = 1<<31 + 3
	repErrTLSReqd        = 1<<31 + 5
	repErrUnknown        = 1<<31 + 6
	repErrBlockSizeReqd  = 1<<31 + 8
	repErrTooBig         = 1<<31 + 9
	infoExport           = 0
	infoName             = 1
	infoDescription      = 2
	infoBlockSize        = 3
	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1 // our one context's ID
)

// commands and command flags
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
	cmdFlagDF     = 1 << 2
	cmdFlagReqOne = 1 << 3
)

// structured reply chunk types and flags
const (
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1
	replyTypeErrorOffset = 1<<15 + 2
)

// base:allocation flags
const (
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// errors on the wire (Linux values, as the protocol fixes them)
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

const (
	// MaxPayload is the largest read or write a client may request (the
	// maximum block size the server advertises; 32 MiB, qemu's own).
	// Larger reads are answered with EOVERFLOW; larger writes end the
	// connection, since their payload would have to be swallowed.
	MaxPayload = 32 << 20
	// PreferredBlock is the advertised preferred block size.
	PreferredBlock = 4096

	// maxOptionLen bounds one option's data: every option this server knows
	// needs a few strings of at most 4096 bytes each.
	maxOptionLen = 64 << 10
	// maxStringLen is the protocol's bound on names and queries.
	maxStringLen = 4096
	// maxOptions bounds option haggling on one connection (a client that
	// never ends it is denying service).
	maxOptions = 1024
)
