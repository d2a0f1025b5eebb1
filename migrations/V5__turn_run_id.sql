-- The run of a running turn's current claim. Every process its assistant starts carries
-- this UUID in its environment (PARLEY_RUN_ID), whatever process group or session it
-- moves to, so a replica that restarts after a crash finds and kills what its previous
-- incarnation left running before it re-queues the turn (README, "Crashes, restarts and
-- replicas"). A new claim writes a new one; it is not cleared afterwards.
alter table turn add column run_id uuid;
