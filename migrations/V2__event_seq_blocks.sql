-- Event numbers: each writer takes a block of 2^20 numbers from this sequence
-- (block k covers [k * 2^20, (k + 1) * 2^20)). A worker takes one when it claims a
-- turn, the sweeper one per notice. Blocks never repeat and grow over time, so a
-- conversation's events are numbered in the order written, and a turn re-run after a
-- crash never reuses numbers that were published live but never stored.
create sequence event_block as bigint minvalue 1 start with 1;
select setval('event_block', coalesce((select max(seq) >> 20 from event), 0) + 1, false);
