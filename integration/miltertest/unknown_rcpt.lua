-- Recipients that are not ours (unknown in one of our domains, or another
-- domain) continue, whatever the size: the quota milter has no say over
-- them, Postfix's own recipient checks decide. With such a recipient in the
-- message the end-of-message check cannot refuse it, so the milter skips
-- the body (SMFIR_SKIP) and continues at end of message.
--
-- Run by integration/tests/miltertest.rs as
--   miltertest -D socket=<milter socket path> -s unknown_rcpt.lua
-- against ramdir's quota milter with the directory and usage set up there
-- (limits 1 MiB, 10% grace; free@ has room, full@ is at its limit, nearly@
-- has 2000 bytes left, info@ -> full@, team@ -> full@ + free@).
-- The milter negotiates away CONNECT, HELO, DATA and end-of-header, so no
-- script sends them (miltertest fills in only the steps negotiated).

-- miltertest prints nothing when a script fails: failures are echoed.
local function expect(conn, want, what)
    local got = mt.getreply(conn)
    if got ~= want then
        error(string.format("%s: milter replied '%s', want '%s'",
                            what, string.char(got), string.char(want)), 2)
    end
end

local function check(err, what)
    if err ~= nil then
        error(what .. ": " .. tostring(err), 2)
    end
end

local function scenario()
    local conn = mt.connect("unix:" .. socket)
    assert(conn, "cannot connect to " .. socket)
    assert(mt.test_option(conn, SMFIP_SKIP), "the milter did not ask for SKIP")

    check(mt.mailfrom(conn, "<sender@remote.test>", "SIZE=999999999"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL")
    check(mt.rcptto(conn, "<nobody@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT nobody@example.org (unknown user)")
    check(mt.rcptto(conn, "<someone@elsewhere.test>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT someone@elsewhere.test (foreign domain)")
    check(mt.header(conn, "Subject", "not ours"), "header")
    check(mt.bodystring(conn, string.rep("z", 1000) .. "\r\n"), "body")
    expect(conn, SMFIR_SKIP, "body")
    check(mt.eom(conn), "end of message")
    expect(conn, SMFIR_CONTINUE, "end of message")

    check(mt.disconnect(conn), "disconnect")
end

local ok, err = pcall(scenario)
if not ok then
    mt.echo("FAILED: " .. tostring(err))
    error(err, 0)
end
