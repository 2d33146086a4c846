-- ramdir-auth.lua: Dovecot 2.4 passdb and userdb backed by ramdir.
--
-- What it is
--   Dovecot 2.4 removed the dict passdb/userdb driver that ramdir served on
--   2.3 ("use Lua instead", core commit 27ca0667). This script is that
--   driver again, in Lua: Dovecot's `lua` passdb/userdb runs it in each
--   auth-worker process, and it asks ramdir's `[dict]` listener the same
--   questions the dict driver asked, over the same socket. ramdir answers
--   exactly as it did for 2.3 (docs/dovecot.md, "What the auth dict
--   answers"), with Dovecot 2.4's userdb field names.
--
-- Needs (Debian 13): dovecot-auth-lua lua-socket lua-cjson  (Lua 5.4)
--
-- dovecot.conf (2.4)
--   passdb ramdir {
--     driver = lua
--     lua_file = /etc/dovecot/ramdir-auth.lua
--     lua_settings {
--       socket = /run/ramdir/dict.sock   # ramdir [dict] listen
--       dict = auth                      # ramdir [dict] auth_dict
--       timeout = 5                      # seconds per socket operation
--     }
--   }
--   userdb ramdir {                      # the same file and settings
--     driver = lua
--     lua_file = /etc/dovecot/ramdir-auth.lua
--     lua_settings {
--       socket = /run/ramdir/dict.sock
--       dict = auth
--       timeout = 5
--     }
--   }
--   Lua passdbs/userdbs run in auth-workers (passdb_use_worker and
--   userdb_use_worker default to yes for lua); keep it so: the socket
--   calls here block, which is fine in a worker and not in the auth
--   process itself.
--
-- The protocol (Dovecot's dict proxy protocol, src/lib-dict-extra/
-- dict-client.h; ramdir: dovecot-auth/src/codec.rs)
--   One connection per worker and script, opened on first use and kept;
--   it starts with the hello  H4 TAB 0 TAB 0 TAB TAB <dict> LF  (major 4
--   makes ramdir answer with Dovecot 2.4's field names). Then, one at a
--   time:
--     L shared/passdb/<user> TAB <user> LF   ->  O<json> | N | F<error>
--     L shared/userdb/<user> TAB <user> LF   ->  O<json> | N | F<error>
--     I 8 TAB 0 TAB shared/userdb/ TAB LF     ->  O<key> TAB <value> LF ...
--                                                 then an empty line, or F
--   Every field is tab-escaped: \001 -> \0011, NUL -> \0010, TAB -> \001t,
--   CR -> \001r, LF -> \001n (Dovecot's str_tabescape, plus NUL), so no
--   user name can end a field or a line early.
--   O<json> is a flat JSON object of string and integer fields; it becomes
--   the passdb/userdb fields as they are (`password`, `nologin`, `user`,
--   `uid`, `gid`, `home`, `quota_storage_size`, ...). N means ramdir has
--   no such user (or the user is disabled, for passdb).
--
-- Failures
--   Anything but a clear answer -- ramdir unreachable, a timeout, F, a
--   reply that is not O/N or not a flat JSON object -- is
--   PASSDB_RESULT_INTERNAL_FAILURE / USERDB_RESULT_INTERNAL_FAILURE, so
--   Dovecot tempfails (LMTP 451, "internal auth failure") and never calls
--   an existing user unknown. A connection that fails is closed; a request
--   that failed on a kept connection (ramdir restarted, or closed it when
--   idle) is sent once more on a new one. A timeout or a garbled reply is
--   not retried.

local unix = require("socket.unix")
local json = require("cjson.safe")

-- Settings (lua_settings { } -> script_init). Defaults as documented.
local SOCKET = "/run/ramdir/dict.sock"
local DICT = "auth"
-- Seconds each connect, send and receive may take; past that ramdir is
-- treated as down for this request (INTERNAL_FAILURE, not USER_UNKNOWN).
local TIMEOUT = 5

local PASSDB = "shared/passdb/"
local USERDB = "shared/userdb/"
-- DICT_ITERATE_FLAG_NO_VALUE: only the user names are needed.
local ITER_NO_VALUE = 8

-- The hello line (script_init sets it from DICT).
local hello = "H4\t0\t0\t\t" .. DICT .. "\n"
-- The kept connection (one per auth-worker and script; passdb and userdb
-- each load the script into their own Lua state).
local conn = nil

local ESCAPE = {
    ["\1"] = "\0011", ["\0"] = "\0010", ["\t"] = "\001t", ["\r"] = "\001r", ["\n"] = "\001n",
}
local UNESCAPE = { ["1"] = "\1", ["0"] = "\0", t = "\t", r = "\r", n = "\n" }

local function escape(s)
    return (s:gsub("[\0\1\t\r\n]", ESCAPE))
end

-- As Dovecot's str_tabunescape: \001 before an unknown letter gives the
-- letter, a trailing \001 is dropped.
local function unescape(s)
    if not s:find("\1", 1, true) then
        return s
    end
    return (s:gsub("\1(.?)", function(c) return UNESCAPE[c] or c end))
end

function script_init(args)
    SOCKET = args.socket or SOCKET
    DICT = args.dict or DICT
    if args.timeout ~= nil then
        TIMEOUT = tonumber(args.timeout)
        if TIMEOUT == nil or TIMEOUT <= 0 then
            error("ramdir-auth.lua: lua_settings timeout must be a positive number of seconds, got "
                .. tostring(args.timeout))
        end
    end
    hello = "H4\t0\t0\t\t" .. escape(DICT) .. "\n"
    return 0
end

local function connect()
    local c, err = (unix.stream or unix)()
    if not c then
        return nil, err
    end
    c:settimeout(TIMEOUT)
    local ok
    ok, err = c:connect(SOCKET)
    if ok then
        ok, err = c:send(hello)
    end
    if not ok then
        c:close()
        return nil, err
    end
    return c
end

-- Send `line` and read its answer with `read(conn)`, which returns the
-- result, or nil, an error and whether the error was the connection's
-- (worth one more try on a new connection) rather than the answer's.
local function exchange(line, read)
    for _ = 1, 2 do
        local fresh = false
        if conn == nil then
            local err
            conn, err = connect()
            if conn == nil then
                return nil, "cannot connect to ramdir at " .. SOCKET .. ": " .. tostring(err)
            end
            fresh = true
        end
        local ok, err = conn:send(line)
        local result, io_error = nil, true
        if ok then
            result, err, io_error = read(conn)
        end
        if result ~= nil then
            return result
        end
        conn:close()
        conn = nil
        if fresh or not io_error or err == "timeout" then
            return nil, "ramdir at " .. SOCKET .. ": " .. tostring(err)
        end
    end
end

-- A lookup reply: { fields } for O, false for N.
local function read_lookup(c)
    local line, err = c:receive("*l")
    if line == nil then
        return nil, err, true
    end
    local kind = line:sub(1, 1)
    if kind == "N" and #line == 1 then
        return false
    elseif kind == "F" then
        return nil, "ramdir failed: " .. unescape(line:sub(2)), false
    elseif kind ~= "O" then
        return nil, "unexpected reply " .. string.format("%q", line:sub(1, 40)), false
    end
    local obj = json.decode(unescape(line:sub(2)))
    if type(obj) ~= "table" then
        return nil, "reply is not a JSON object", false
    end
    local fields = {}
    for k, v in pairs(obj) do
        local t = type(v)
        if type(k) ~= "string" then
            return nil, "reply is not a flat JSON object", false
        elseif t == "string" then
            fields[k] = v
        elseif t == "number" and math.tointeger(v) ~= nil then
            -- cjson gives Lua 5.4 floats; Dovecot rejects "5000.0".
            fields[k] = tostring(math.tointeger(v))
        else
            return nil, "field " .. k .. " is not a string or an integer", false
        end
    end
    return fields
end

local function lookup(prefix, user)
    local u = escape(user)
    return exchange("L" .. prefix .. u .. "\t" .. u .. "\n", read_lookup)
end

function auth_passdb_lookup(req)
    local fields, err = lookup(PASSDB, req.user)
    if fields == nil then
        return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, err
    elseif fields == false then
        return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "no such user"
    end
    return dovecot.auth.PASSDB_RESULT_OK, fields
end

function auth_userdb_lookup(req)
    local fields, err = lookup(USERDB, req.user)
    if fields == nil then
        return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, err
    elseif fields == false then
        return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, "no such user"
    end
    return dovecot.auth.USERDB_RESULT_OK, fields
end

-- Every user name (`doveadm user '*'`, `doveadm ... -A`). A failure part
-- way is an error, never a short list.
local function read_iteration(c)
    local users = {}
    while true do
        local line, err = c:receive("*l")
        if line == nil then
            return nil, err, true
        elseif line == "" then
            return users
        end
        local kind = line:sub(1, 1)
        if kind == "F" then
            return nil, "ramdir failed: " .. unescape(line:sub(2)), false
        end
        local key = kind == "O" and line:match("^O([^\t]*)")
        if not key then
            return nil, "unexpected row " .. string.format("%q", line:sub(1, 40)), false
        end
        key = unescape(key)
        if key:sub(1, #USERDB) ~= USERDB or #key == #USERDB then
            return nil, "row outside " .. USERDB, false
        end
        users[#users + 1] = key:sub(#USERDB + 1)
    end
end

function auth_userdb_iterate()
    local users, err = exchange("I" .. ITER_NO_VALUE .. "\t0\t" .. USERDB .. "\t\n", read_iteration)
    if users == nil then
        error(err)
    end
    return users
end

-- ramdir's answers depend on the user name alone, so that is the auth
-- cache key (used only when auth_cache_size is set).
function auth_passdb_get_cache_key()
    return "%{user}"
end

function auth_userdb_get_cache_key()
    return "%{user}"
end
