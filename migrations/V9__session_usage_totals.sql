-- A session's token and cost totals, kept as its replies are stored, so reading a
-- session costs the same at 50,000 turns as at 10 (docs/performance.md, "Flat cost as
-- the data grows"). Before this they were summed over the session's assistant messages
-- on every read.
--
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11+). The
-- columns are in no index, so adding to them on a turn's completion can stay a HOT
-- update of the session row.
alter table session
    add column input_tokens bigint not null default 0,
    add column output_tokens bigint not null default 0,
    add column cost_usd float8 not null default 0;

-- Existing sessions: the sum the read used to compute, once.
update session s
   set input_tokens = u.input_tokens, output_tokens = u.output_tokens, cost_usd = u.cost_usd
  from (select t.session_id,
               coalesce(sum((m.metadata->'usage'->>'input_tokens')::bigint), 0)::bigint as input_tokens,
               coalesce(sum((m.metadata->'usage'->>'output_tokens')::bigint), 0)::bigint as output_tokens,
               coalesce(sum((m.metadata->>'cost_usd')::float8), 0)::float8 as cost_usd
          from message m join turn t on t.turn_id = m.turn_id
         where m.role = 'assistant' and t.session_id is not null
         group by t.session_id) u
 where u.session_id = s.session_id;
