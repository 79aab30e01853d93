// Package hsm keeps govnet's CA keys in a PKCS#11 token (an HSM; SoftHSM2
// in development and tests) and hands them out as crypto.Signer values.
// No code path here can export a private key or load one from a file.
//
// # Modules
//
// Open loads a PKCS#11 module only from an allowlist of absolute paths
// (DefaultModules, or WithAllowedModules). A PKCS#11 library can be
// initialized only once per process, so modules are kept in a
// process-wide, reference-counted registry keyed by the module's path
// with symlinks resolved: all Tokens of one module share one *pkcs11.Ctx,
// and the last Token to close finalizes and unloads it. If something else
// in the process initialized the library first (C_Initialize returns
// CKR_CRYPTOKI_ALREADY_INITIALIZED), the library is shared and never
// finalized by this package.
//
// # Tokens and sessions
//
// Tokens are selected by label, never by slot ID (SoftHSM2 gives slots
// random IDs). The label must match exactly, except for trailing blanks,
// which PKCS#11 uses to pad labels to 32 bytes; a longer label is refused.
// Two tokens with the requested label are refused (ErrTokenAmbiguous). A Token logs in with the user PIN (see ReadPIN) and keeps a
// small pool of read-write sessions (WithSessions, default
// DefaultSessions); every operation borrows one and returns it, so a Token
// and its signers are safe for concurrent use. An operation that fails
// because its session was closed, invalidated or logged out
// (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN,
// or CKR_OPERATION_ACTIVE left over from an aborted call) is retried once
// on a fresh, logged-in session.
//
// PKCS#11 login state belongs to the process, not to a session: C_Login on
// a token this process is already logged in to succeeds without checking
// the PIN. Open therefore remembers (as a SHA-256 hash) the PIN each token
// was logged in with and rejects a different one with ErrWrongPIN while
// another Token of the same token is open.
//
// # Keys
//
// GenerateKey creates an ECDSA key pair (P-256 or P-384) on the token: a
// private key object with CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE and
// CKA_SIGN true and CKA_EXTRACTABLE false, and a public key object with
// CKA_VERIFY; both carry the label and one random 16-byte CKA_ID. Signer
// finds an existing key by label. Signatures are made with CKM_ECDSA over
// the caller's digest and returned in ASN.1 DER form, as crypto/x509
// expects.
//
// # Token discovery (SoftHSM2)
//
// SoftHSM2 2.6 reads its token directory only in C_Initialize; C_GetSlotList
// does not re-scan it. A token created with softhsm2-util while this
// process has the module initialized (some Token open) is therefore not
// found (ErrTokenNotFound) until every Token of that module has been closed
// and one is opened again, which re-initializes the library. Restart the
// process, or close all Tokens, after creating a token. Package hsmtest
// works around this for tests by creating tokens in batches.
package hsm
