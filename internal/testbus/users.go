package testbus

// Test users, created on demand by EnsureUser, and what AegisRules lets
// each of them do.
const (
	// UserAdmin may do everything (polkit YES).
	UserAdmin = "aegis-test-a"
	// UserPlain gets the .policy defaults: a challenge for the
	// auth_admin_keep actions and no for answer-prompt (without logind no
	// subject is active).
	UserPlain = "aegis-test-b"
	// UserRefused is refused every action (polkit NO).
	UserRefused = "aegis-test-c"
	// UserChallenged must authenticate as an administrator for every
	// action (polkit AUTH_ADMIN): a challenge when the call does not allow
	// interaction, a dialog (which an authentication agent may dismiss)
	// when it does.
	UserChallenged = "aegis-test-d"
	// UserDesktop may answer prompts about its own processes, like a user
	// in an active session, and nothing else.
	UserDesktop = "aegis-test-e"
)

// AegisRules is a polkit .rules file that gives the test users the
// rights documented on their constants.
const AegisRules = `// aegis test rules (internal/testbus)
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("io.github.aegisfw.aegis.") != 0)
        return polkit.Result.NOT_HANDLED;
    if (subject.user == "` + UserAdmin + `")
        return polkit.Result.YES;
    if (subject.user == "` + UserRefused + `")
        return polkit.Result.NO;
    if (subject.user == "` + UserChallenged + `")
        return polkit.Result.AUTH_ADMIN;
    if (subject.user == "` + UserDesktop + `" && action.id == "io.github.aegisfw.aegis.answer-prompt")
        return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
`
