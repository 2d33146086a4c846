-- A full mailbox, and a nearly full one with a big SIZE=: each RCPT gets
-- the over-quota reply (SMFIR_REPLYCODE; miltertest shows only the kind of
-- a RCPT reply, the milter crate's tests check its text, 452 4.2.2 Mailbox
-- full), while a recipient with room in the same message continues.
--
-- Run by integration/tests/miltertest.rs as
--   miltertest -D socket=<milter socket path> -s full_rcpt_size.lua
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

    check(mt.mailfrom(conn, "<sender@remote.test>", "SIZE=200000"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL")
    check(mt.rcptto(conn, "<full@example.org>"), "RCPT")
    expect(conn, SMFIR_REPLYCODE, "RCPT full@")
    check(mt.rcptto(conn, "<nearly@example.org>"), "RCPT")
    expect(conn, SMFIR_REPLYCODE, "RCPT nearly@ with SIZE=200000")
    check(mt.rcptto(conn, "<free@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT free@ with SIZE=200000")
    check(mt.abort(conn), "abort")

    -- The nearly full mailbox takes a small message; the full one does not.
    check(mt.mailfrom(conn, "<sender@remote.test>", "size=1000"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL")
    check(mt.rcptto(conn, "<nearly@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT nearly@ with SIZE=1000")
    check(mt.rcptto(conn, "<full@example.org>"), "RCPT")
    expect(conn, SMFIR_REPLYCODE, "RCPT full@ with SIZE=1000")

    check(mt.disconnect(conn), "disconnect")
end

local ok, err = pcall(scenario)
if not ok then
    mt.echo("FAILED: " .. tostring(err))
    error(err, 0)
end
