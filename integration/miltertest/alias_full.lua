-- An alias whose only mailbox is full gets the over-quota reply at RCPT:
-- the milter sees recipients before alias expansion and resolves them
-- itself. An alias with one mailbox that has room continues.
--
-- Run by integration/tests/miltertest.rs as
--   miltertest -D socket=<milter socket path> -s alias_full.lua
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

    check(mt.mailfrom(conn, "<sender@remote.test>", "SIZE=1000"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL")
    check(mt.rcptto(conn, "<info@example.org>"), "RCPT")
    expect(conn, SMFIR_REPLYCODE, "RCPT info@ (alias of full@)")
    check(mt.rcptto(conn, "<Info+Tag@Example.org>"), "RCPT")
    expect(conn, SMFIR_REPLYCODE, "RCPT Info+Tag@Example.org (same alias)")
    check(mt.rcptto(conn, "<team@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT team@ (full@ and free@)")

    check(mt.disconnect(conn), "disconnect")
end

local ok, err = pcall(scenario)
if not ok then
    mt.echo("FAILED: " .. tostring(err))
    error(err, 0)
end
